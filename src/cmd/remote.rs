//! `ats-hook remote add NAME URL`: on the pushing side, add the git remote and pin the
//! server's host key, so the first push never asks (or worse, trusts) an unknown host.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::access::remote::{default_known_hosts, parse_host_key, pin, scan, SshUrl};
use crate::access::sshkey::PublicKey;
use crate::sys::process::Cmd;

pub struct AddOptions<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub host_key: Option<&'a str>,
    pub scan: bool,
    pub known_hosts: Option<&'a Path>,
    pub force: bool,
}

/// What `--remote NAME` asks the server for: `ats-hook COMMAND` with these arguments.
pub struct Request<'a> {
    pub command: &'a str,
    pub json: bool,
    pub id: Option<&'a str>,
    /// `--app`, for a repository of several apps.
    pub app: Option<&'a str>,
}

/// Runs `ats-hook` on the server behind the git remote `name` of the clone this runs in,
/// through ssh the way git reaches it (`GIT_SSH_COMMAND`, else `core.sshCommand`, else `ssh`).
/// A deploy key's gate lets these through; a login shell runs the server's `ats-hook`.
pub fn run_there(name: &str, request: &Request<'_>) -> Result<ExitCode> {
    let dir = clone_dir()?;
    let git = |args: &[&str]| Cmd::new("git").args(args).dir(&dir).read();
    let url = match git(&["remote", "get-url", name]) {
        Ok(url) => url.trim().to_string(),
        Err(_) => bail!(
            "this clone has no remote `{name}` (its remotes: {}); add one with `ats-hook remote add {name} URL`",
            names(&dir).unwrap_or_else(|| "none".to_string())
        ),
    };
    let server =
        SshUrl::parse(&url).with_context(|| format!("remote `{name}` is not reached over SSH"))?;
    let ssh = match std::env::var("GIT_SSH_COMMAND") {
        Ok(ssh) if !ssh.trim().is_empty() => ssh,
        _ => git(&["config", "--get", "core.sshCommand"])
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "ssh".to_string()),
    };
    let mut remote_command = format!(
        "ats-hook {} --repo {}",
        request.command,
        git_quote(&server.path)
    );
    if request.json {
        remote_command.push_str(" --json");
    }
    if let Some(app) = request.app {
        crate::config::plain_name("app", app)?;
        remote_command.push_str(" --app ");
        remote_command.push_str(app);
    }
    if let Some(id) = request.id {
        let plain = !id.is_empty()
            && !id.starts_with('-')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain {
            bail!("`{id}` is not a deploy, release or commit id");
        }
        remote_command.push(' ');
        remote_command.push_str(id);
    }
    let destination = match &server.user {
        Some(user) => format!("{user}@{}", server.host),
        None => server.host.clone(),
    };
    // The way git runs it: the configured command through a shell, with our arguments after.
    let mut cmd = Cmd::new("sh")
        .arg("-c")
        .arg(format!("{ssh} \"$@\""))
        .arg("ssh");
    if server.port != 22 {
        cmd = cmd.arg("-p").arg(server.port.to_string());
    }
    tracing::debug!("running `{remote_command}` on `{destination}`");
    Err(cmd.arg("--").arg(destination).arg(remote_command).exec())
}

/// The current folder, when it is in a git clone.
fn clone_dir() -> Result<PathBuf> {
    let dir = std::env::current_dir().context("failed to find the current folder")?;
    git2::Repository::discover(&dir).with_context(|| {
        format!(
            "`{}` is not inside a git repository: run this in your app's clone",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// The remotes of the clone `dir` is in, for a message (`None` when it has none).
pub fn names(dir: &Path) -> Option<String> {
    let remotes = Cmd::new("git").arg("remote").dir(dir).read().ok()?;
    let remotes: Vec<&str> = remotes.split_whitespace().collect();
    (!remotes.is_empty()).then(|| remotes.join(", "))
}

/// A path quoted the way git quotes it for a remote shell: `'it'\''s'`.
fn git_quote(path: &str) -> String {
    let mut quoted = String::from("'");
    for c in path.chars() {
        match c {
            '\'' => quoted.push_str("'\\''"),
            '!' => quoted.push_str("'\\!'"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

pub fn add(options: &AddOptions<'_>, out: &mut dyn Write) -> Result<ExitCode> {
    let url = SshUrl::parse(options.url)?;
    if options.name.is_empty()
        || options.name.starts_with('-')
        || options.name.contains(char::is_whitespace)
    {
        bail!("`{}` is not a remote name", options.name);
    }
    let dir = clone_dir()?;

    // Host keys first: nothing is changed unless they can be pinned.
    let keys: Vec<PublicKey> = match (options.host_key, options.scan) {
        (Some(_), true) => bail!("give `--host-key` or `--scan`, not both"),
        (Some(line), false) => vec![parse_host_key(line, &url)?],
        (None, true) => scan(&url)?,
        (None, false) => Vec::new(),
    };

    let existing = Cmd::new("git")
        .args(["remote", "get-url", options.name])
        .dir(&dir)
        .read()
        .ok();
    match existing.as_deref().map(str::trim) {
        Some(current) if current == options.url => writeln!(
            out,
            "remote `{}` already points at `{}`",
            options.name, options.url
        )?,
        Some(current) if !options.force => bail!(
            "remote `{}` points at `{current}`, not `{}`: pass `--force` to change it",
            options.name,
            options.url
        ),
        Some(current) => {
            Cmd::new("git")
                .args(["remote", "set-url", options.name, options.url])
                .dir(&dir)
                .read()?;
            writeln!(
                out,
                "changed remote `{}` from `{current}` to `{}`",
                options.name, options.url
            )?;
        }
        None => {
            Cmd::new("git")
                .args(["remote", "add", options.name, options.url])
                .dir(&dir)
                .read()?;
            writeln!(out, "added remote `{}` → `{}`", options.name, options.url)?;
        }
    }

    if keys.is_empty() {
        writeln!(out, "no host key pinned: pass `--scan` or `--host-key LINE` (from `ats-hook keys add --generate`)")?;
        return Ok(ExitCode::SUCCESS);
    }
    let file = match options.known_hosts {
        Some(file) => file.to_path_buf(),
        None => default_known_hosts()?,
    };
    let pinned = pin(&file, &url, &keys)?;
    writeln!(
        out,
        "{pinned} host key(s) of `{}` pinned in `{}`",
        url.known_hosts_name(),
        file.display()
    )?;
    if options.known_hosts.is_some() {
        let ssh = format!(
            "ssh -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            file.display()
        );
        writeln!(
            out,
            "ssh reads it when told: GIT_SSH_COMMAND=\"{ssh}\" git push {} main",
            options.name
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_as_git_quotes_them() {
        assert_eq!(git_quote("/srv/app.git"), "'/srv/app.git'");
        assert_eq!(git_quote("it's!"), "'it'\\''s'\\!''");
    }
}
