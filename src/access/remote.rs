//! A remote on the pushing side: its SSH URL, and the server's host keys pinned in
//! `known_hosts` (given, or scanned once). Uses `sys` only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::access::sshkey::PublicKey;
use crate::sys::process::Cmd;

/// The parts of an SSH remote URL that matter here.
#[derive(Debug, PartialEq, Eq)]
pub struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    /// The repository's path on the server, as git sends it.
    pub path: String,
}

impl SshUrl {
    /// `ssh://[user@]host[:port]/path` or `[user@]host:path`.
    pub fn parse(url: &str) -> Result<SshUrl> {
        let bad = || {
            anyhow::anyhow!("`{url}` is not an SSH remote: write `ssh://user@host[:port]/path/app.git` or `user@host:path/app.git`")
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (authority, path) = if let Some(rest) = url.strip_prefix("ssh://") {
            let slash = rest.find('/').ok_or_else(bad)?;
            (&rest[..slash], &rest[slash..])
        } else if url.contains("://") {
            return Err(bad());
        } else {
            let colon = url.find(':').ok_or_else(bad)?;
            let (host, path) = (&url[..colon], &url[colon + 1..]);
            if host.contains('/') {
                return Err(bad());
            }
            (host, path)
        };
        if path.is_empty() || path == "/" {
            return Err(bad());
        }
        let (user, host_port) = match authority.rsplit_once('@') {
            Some(("", _)) => return Err(bad()),
            Some((user, host)) => (Some(user), host),
            None => (None, authority),
        };
        if user.is_some_and(|u| u.starts_with('-') || u.contains(['\'', '"', '\\'])) {
            return Err(bad());
        }
        let (host, port) = match host_port.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').ok_or_else(bad)?;
                (host, after.strip_prefix(':'))
            }
            None => match host_port.split_once(':') {
                Some((host, port)) if url.starts_with("ssh://") => (host, Some(port)),
                _ => (host_port, None),
            },
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)?,
            None => 22,
        };
        let valid_host = !host.is_empty()
            && !host.starts_with('-')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
        if !valid_host {
            return Err(bad());
        }
        // `ssh://host/~/app.git` and `host:app.git` are both home-relative for git.
        let path = path
            .strip_prefix("/~/")
            .map_or(path.to_string(), |rest| format!("~/{rest}"));
        Ok(SshUrl {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            path,
        })
    }

    /// How `known_hosts` names this host.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

pub fn default_known_hosts() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("`HOME` is not set: pass `--known-hosts FILE`")?;
    Ok(PathBuf::from(home).join(".ssh/known_hosts"))
}

/// A `known_hosts` line for this host (`[host]:port type key`), or just `type key`.
pub fn parse_host_key(line: &str, url: &SshUrl) -> Result<PublicKey> {
    let line = line.trim();
    let key_part = match line.split_once(char::is_whitespace) {
        Some((first, rest))
            if !first.starts_with("ssh-")
                && !first.starts_with("ecdsa-")
                && !first.starts_with("sk-") =>
        {
            if first != url.known_hosts_name() && first != url.host {
                bail!(
                    "the host key is for `{first}`, not `{}`",
                    url.known_hosts_name()
                );
            }
            rest
        }
        _ => line,
    };
    PublicKey::parse(key_part).context("`--host-key` is not a host key line")
}

/// Reads the server's host keys with `ssh-keyscan`.
pub fn scan(url: &SshUrl) -> Result<Vec<PublicKey>> {
    let text = Cmd::new("ssh-keyscan")
        .args(["-T", "5", "-p", &url.port.to_string(), &url.host])
        .timeout(Duration::from_secs(20))
        .read()
        .unwrap_or_default();
    let keys: Vec<PublicKey> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            line.split_once(char::is_whitespace)
                .and_then(|(_, key)| PublicKey::parse(key).ok())
        })
        .collect();
    if keys.is_empty() {
        bail!(
            "could not read a host key from `{}` port {}: is the server up and reachable?",
            url.host,
            url.port
        );
    }
    Ok(keys)
}

/// Adds the keys to `file`, refusing when the file already holds other keys of the same type
/// for this host (a changed host key is something to look into, not to paper over).
pub fn pin(file: &Path, url: &SshUrl, keys: &[PublicKey]) -> Result<usize> {
    let name = url.known_hosts_name();
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => {
            return Err(err).with_context(|| format!("failed to read `{}`", file.display()))
        }
    };
    let mut added = Vec::new();
    for key in keys {
        let known: Vec<PublicKey> = text
            .lines()
            .filter_map(|line| line.split_once(char::is_whitespace))
            .filter(|(hosts, _)| hosts.split(',').any(|h| h == name))
            .filter_map(|(_, key)| PublicKey::parse(key).ok())
            .collect();
        if known.iter().any(|k| k.blob == key.blob) {
            continue;
        }
        if known.iter().any(|k| k.kind == key.kind) {
            bail!(
                "`{}` already holds a different {} key for `{name}`: if the server's key really changed, remove the old line first",
                file.display(),
                key.kind
            );
        }
        added.push(format!("{name} {} {}\n", key.kind, key.blob));
    }
    if let Some(dir) = file.parent() {
        if !dir.is_dir() {
            fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    let mut handle = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(file)
        .with_context(|| format!("failed to open `{}`", file.display()))?;
    for line in &added {
        handle
            .write_all(line.as_bytes())
            .with_context(|| format!("failed to write `{}`", file.display()))?;
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ssh_urls() {
        let parse = |u| SshUrl::parse(u).unwrap();
        assert_eq!(
            parse("ssh://deployer@127.0.0.1:2222/home/deployer/app.git"),
            SshUrl {
                user: Some("deployer".into()),
                host: "127.0.0.1".into(),
                port: 2222,
                path: "/home/deployer/app.git".into(),
            }
        );
        assert_eq!(
            parse("deployer@example.com:app.git"),
            SshUrl {
                user: Some("deployer".into()),
                host: "example.com".into(),
                port: 22,
                path: "app.git".into(),
            }
        );
        assert_eq!(parse("ssh://h/~/app.git").path, "~/app.git");
        assert_eq!(parse("h:/srv/app.git").user, None);
        assert_eq!(parse("ssh://[::1]:22/srv/app.git").host, "::1");
        assert_eq!(parse("ssh://h:2222/x").known_hosts_name(), "[h]:2222");
        for bad in [
            "",
            "app.git",
            "http://x/y.git",
            "ssh://host",
            "ssh://host:port/x",
            "user@:x",
            "ssh://-oProxyCommand=x/y",
            "a b:c",
            "ssh://h:0/x",
            "@h:x",
            "-oProxyCommand=x@h:x",
        ] {
            assert!(SshUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
