//! `ats-hook keys add|list|remove`: deploy keys that can push to one repository and nothing else.
//!
//! A key goes into the user's `authorized_keys` with `restrict` (no shell, no forwarding, no
//! pty) and a forced command, `ats-hook ssh-gate --repo PATH`, that lets through only git's
//! transport for that repository. The file and its folder keep modes 600/700 and the user's
//! ownership, and are rewritten whole (write, then rename) so a failure leaves the old file.
//!
//! Root runs these on a deploy user's home: every file there is opened through `owner::UserDir`
//! (held folders, no symlink followed, created exclusively), and only lines that are keys or
//! comments are ever copied from the old file to the new one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use nix::unistd::User;

use crate::access::sshkey::{AuthorizedKey, PublicKey};
use crate::sys::owner::UserDir;
use crate::sys::process::Cmd;

pub struct AddOptions<'a> {
    pub repo: &'a Path,
    pub user: &'a str,
    pub public_key: Option<&'a Path>,
    pub name: Option<&'a str>,
    /// For `--generate`: where the server's host keys are, how CI reaches it.
    pub host: Option<&'a str>,
    pub port: u16,
    pub host_keys: &'a Path,
    pub private_key_file: Option<&'a Path>,
    /// The key may run `ats-hook rollback` through the gate.
    pub allow_rollback: bool,
    /// The key may only fetch and read.
    pub read_only: bool,
}

struct Target {
    repo: PathBuf,
    user: User,
    file: PathBuf,
}

fn target(repo: &Path, user: &str) -> Result<Target> {
    let repo = repo.canonicalize().with_context(|| {
        format!(
            "no repository at `{}`: run `ats-hook install` first",
            repo.display()
        )
    })?;
    if super::inspect_repo(&repo)? != super::RepoKind::Bare {
        bail!("`{}` is not a bare repository", repo.display());
    }
    let user = User::from_name(user)
        .with_context(|| format!("failed to look up user `{user}`"))?
        .with_context(|| format!("no user `{user}` on this machine"))?;
    let file = user.dir.join(".ssh/authorized_keys");
    Ok(Target { repo, user, file })
}

/// Characters that need no quoting in the forced command, which sshd runs through a shell.
fn shell_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+@=:,-".contains(c))
}

fn gate_marker(repo: &Path) -> String {
    format!(" ssh-gate --repo {}", repo.display())
}

/// The user's `~/.ssh`, held open; created (0700) when `create`, else `None` when missing.
fn ssh_dir(target: &Target, create: bool) -> Result<Option<UserDir>> {
    let home = UserDir::home(&target.user)?;
    if !create && !home.has(".ssh") {
        return Ok(None);
    }
    home.private_folder(".ssh", &target.user).map(Some)
}

/// The lines of `authorized_keys` in `dir`: refused, naming the line numbers and nothing of
/// their text, unless each is blank, a comment or a key line.
fn read_lines(target: &Target, dir: Option<&UserDir>) -> Result<Vec<String>> {
    let Some(bytes) = dir
        .map(|dir| dir.read(AUTHORIZED_KEYS, &target.user))
        .transpose()?
        .flatten()
    else {
        return Ok(Vec::new());
    };
    let file = target.file.display();
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("`{file}` is not text; refusing to rewrite it"))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let bad: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#') && AuthorizedKey::parse(line).is_none()
        })
        .map(|(n, _)| (n + 1).to_string())
        .collect();
    if !bad.is_empty() {
        bail!(
            "`{file}` has lines that are not keys (line {}): ats-hook copies only key lines and comments into the file it writes; fix or remove them and run again",
            bad.join(", ")
        );
    }
    Ok(lines)
}

const AUTHORIZED_KEYS: &str = "authorized_keys";

/// Writes `authorized_keys` whole, 600 in a 700 folder, owned by the user.
fn write_lines(target: &Target, dir: &UserDir, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    dir.replace(AUTHORIZED_KEYS, text.as_bytes(), 0o600, &target.user)
}

pub fn add(options: &AddOptions<'_>, out: &mut dyn Write) -> Result<ExitCode> {
    let target = target(options.repo, options.user)?;
    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .context("failed to find the ats-hook binary")?;
    for path in [&exe, &target.repo] {
        if !shell_safe(&path.to_string_lossy()) {
            bail!(
                "`{}` has characters a forced command cannot carry safely; use a plainer path",
                path.display()
            );
        }
    }

    // Generate first, in a private folder, so a failure leaves authorized_keys as it was.
    let workdir = tempfile::tempdir().context("failed to create a private temporary folder")?;
    let (key, private) = match options.public_key {
        Some(path) => (PublicKey::read(path)?, None),
        None => {
            let host = hostname();
            let comment = format!("ats-hook-deploy@{host}");
            let path = workdir.path().join("deploy_key");
            Cmd::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f"])
                .arg(&path)
                .read()
                .context("failed to generate a key pair")?;
            let private = fs::read_to_string(&path).context("failed to read the generated key")?;
            (PublicKey::read(&path.with_extension("pub"))?, Some(private))
        }
    };
    let name: String = options
        .name
        .map(str::to_string)
        .unwrap_or_else(|| {
            if key.comment.is_empty() {
                "deploy-key".into()
            } else {
                key.comment.clone()
            }
        })
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();

    let dir = ssh_dir(&target, true)?.expect("created");
    let mut lines = read_lines(&target, Some(&dir))?;
    if let Some(existing) = lines
        .iter()
        .filter_map(|l| AuthorizedKey::parse(l))
        .find(|e| e.key.blob == key.blob)
    {
        bail!(
            "key {} is already in `{}`{}",
            key.fingerprint(),
            target.file.display(),
            if existing.options.is_empty() {
                " (without restrictions: remove that line first)"
            } else {
                ""
            }
        );
    }
    let command = format!(
        "{}{} --key-name {name}{}",
        exe.display(),
        gate_marker(&target.repo),
        if options.allow_rollback {
            " --allow-rollback"
        } else if options.read_only {
            " --read-only"
        } else {
            ""
        }
    );
    lines.push(format!("restrict,command=\"{command}\" {key}"));

    if let (Some(private), Some(file)) = (&private, options.private_key_file) {
        let mut handle = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .with_context(|| {
                format!("failed to create `{}` (it must not exist)", file.display())
            })?;
        handle.write_all(private.as_bytes())?;
    }
    write_lines(&target, &dir, &lines)?;
    writeln!(
        out,
        "added deploy key {} ({name}) for `{}`: {}",
        key.fingerprint(),
        target.user.name,
        if options.read_only {
            format!(
                "it can fetch from `{}` (with its Git LFS objects) and read its status, releases and log, nothing else",
                target.repo.display()
            )
        } else {
            format!(
                "it can push to and fetch from `{}` (with Git LFS objects), deploy again a commit it holds, and read its status, releases and log{}, nothing else",
                target.repo.display(),
                if options.allow_rollback {
                    ", and roll it back"
                } else {
                    ""
                }
            )
        }
    )?;
    writeln!(
        out,
        "note: the deploy's steps run the pushed code (`pip install`, migrations) as `{}`, so this key is code execution as `{}`: give each app its own deploy user, owning nothing else",
        target.user.name, target.user.name
    )?;

    if let Some(private) = private {
        let host = options.host.map(str::to_string).unwrap_or_else(hostname);
        writeln!(
            out,
            "\nWhat CI needs (GitHub: Settings → Secrets and variables → Actions):"
        )?;
        match options.private_key_file {
            Some(file) => writeln!(
                out,
                "\nSSH_DEPLOYMENT_KEY: the private key, written to `{}` (mode 600)",
                file.display()
            )?,
            None => write!(out, "\nSSH_DEPLOYMENT_KEY:\n{private}")?,
        }
        writeln!(out, "\nKNOWN_DEPLOYMENT_HOSTS:")?;
        let known = known_hosts_lines(options.host_keys, &host, options.port)?;
        if known.is_empty() {
            writeln!(
                out,
                "(no host keys in `{}`: run `ssh-keyscan -p {} {host}` from a trusted place)",
                options.host_keys.display(),
                options.port
            )?;
        }
        for line in known {
            writeln!(out, "{line}")?;
        }
        let port = if options.port == 22 {
            String::new()
        } else {
            format!(":{}", options.port)
        };
        writeln!(
            out,
            "\nSTAGING_REMOTE_REPO:\nssh://{}@{host}{port}{}",
            target.user.name,
            target.repo.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The server's host keys as `known_hosts` lines for `host:port`.
fn known_hosts_lines(dir: &Path, host: &str, port: u16) -> Result<Vec<String>> {
    let pattern = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let mut lines = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(lines);
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("ssh_host_") && name.ends_with("_key.pub") {
            let key = PublicKey::read(&file)?;
            lines.push(format!("{pattern} {} {}", key.kind, key.blob));
        }
    }
    Ok(lines)
}

/// Our lines for this repository.
fn ours(lines: &[String], repo: &Path) -> Vec<(usize, AuthorizedKey)> {
    let marker = gate_marker(repo);
    lines
        .iter()
        .enumerate()
        .filter_map(|(n, line)| AuthorizedKey::parse(line).map(|entry| (n, entry)))
        .filter(|(_, entry)| {
            entry
                .forced_command()
                .is_some_and(|c| c.contains(&format!("{marker} ")))
        })
        .collect()
}

fn key_name(entry: &AuthorizedKey) -> String {
    entry
        .forced_command()
        .and_then(|c| {
            c.split(" --key-name ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

pub fn list(repo: &Path, user: &str, out: &mut dyn Write) -> Result<ExitCode> {
    let target = target(repo, user)?;
    let lines = read_lines(&target, ssh_dir(&target, false)?.as_ref())?;
    let keys = ours(&lines, &target.repo);
    if keys.is_empty() {
        writeln!(
            out,
            "no deploy keys for `{}` in `{}`",
            target.repo.display(),
            target.file.display()
        )?;
    }
    for (_, entry) in keys {
        let command = entry.forced_command().unwrap_or_default();
        let may = if command.ends_with(" --read-only") {
            " (read-only)"
        } else if command.ends_with(" --allow-rollback") {
            " (may roll back)"
        } else {
            ""
        };
        writeln!(
            out,
            "{} {} {}{may}",
            entry.key.fingerprint(),
            key_name(&entry),
            entry.key.kind
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the deploy keys of this repository matching a fingerprint or a name.
pub fn remove(repo: &Path, user: &str, which: &str, out: &mut dyn Write) -> Result<ExitCode> {
    let target = target(repo, user)?;
    let dir = ssh_dir(&target, false)?;
    let lines = read_lines(&target, dir.as_ref())?;
    let matching: Vec<(usize, AuthorizedKey)> = ours(&lines, &target.repo)
        .into_iter()
        .filter(|(_, entry)| entry.key.fingerprint() == which || key_name(entry) == which)
        .collect();
    if matching.is_empty() {
        bail!(
            "no deploy key `{which}` for `{}` in `{}`; `ats-hook keys list` shows them",
            target.repo.display(),
            target.file.display()
        );
    }
    let kept: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(n, _)| !matching.iter().any(|(m, _)| m == n))
        .map(|(_, line)| line.clone())
        .collect();
    let dir = dir.expect("a key was found in it");
    write_lines(&target, &dir, &kept)?;
    for (_, entry) in matching {
        writeln!(
            out,
            "removed deploy key {} ({})",
            entry.key.fingerprint(),
            key_name(&entry)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
