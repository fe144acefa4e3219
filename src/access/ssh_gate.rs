//! What the SSH gate lets through: git's transport for one repository and a few of
//! ats-hook's own commands, parsed the way git quotes them, and the path they name resolved
//! the way git resolves it. Uses `sys` only.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    ReceivePack,
    UploadPack,
    /// git-lfs's `git-lfs-transfer PATH upload|download`.
    LfsTransfer(super::lfs::transfer::Operation),
}

/// A command of ats-hook's own that a deploy key may run.
#[derive(Debug, PartialEq, Eq)]
pub struct AtsRequest {
    pub command: &'static str,
    pub repo: Option<String>,
    pub json: bool,
    pub id: Option<String>,
    pub skip: Vec<String>,
    pub no_restart: bool,
    /// `--app NAME`, for a repository of several apps.
    pub app: Option<String>,
}

/// `ats-hook status|releases|log|rollback|deploy` with `--repo PATH` (quoted as git quotes
/// paths), `--json` for the reading ones, an id for `log` and `rollback`, and for `deploy` a
/// commit (hex), `--skip STEP` and `--no-restart`, and `--app NAME` for any; nothing else.
pub fn parse_ats_request(request: &str) -> Result<AtsRequest> {
    if request.chars().any(|c| c.is_control()) {
        bail!("the command holds control characters");
    }
    let words = split_words(request.strip_prefix("ats-hook ").unwrap_or(request))?;
    let mut words = words.into_iter();
    let command = match words.next().as_deref() {
        Some("status") => "status",
        Some("releases") => "releases",
        Some("log") => "log",
        Some("rollback") => "rollback",
        Some("deploy") => "deploy",
        _ => bail!("only git-receive-pack, git-upload-pack and `ats-hook status`, `releases`, `log`, `rollback` and `deploy` are allowed"),
    };
    let mut parsed = AtsRequest {
        command,
        repo: None,
        json: false,
        id: None,
        skip: Vec::new(),
        no_restart: false,
        app: None,
    };
    let name = |word: &str| {
        !word.is_empty()
            && !word.starts_with('-')
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    while let Some(word) = words.next() {
        match word.as_str() {
            "--repo" if parsed.repo.is_none() => {
                parsed.repo = Some(words.next().context("`--repo` needs a path")?);
            }
            "--json" if !matches!(command, "rollback" | "deploy") && !parsed.json => {
                parsed.json = true
            }
            "--skip" if command == "deploy" => match words.next() {
                Some(step) if name(&step) => parsed.skip.push(step),
                _ => bail!("`--skip` needs a step's name"),
            },
            "--no-restart" if command == "deploy" && !parsed.no_restart => parsed.no_restart = true,
            "--app" if parsed.app.is_none() => match words.next() {
                Some(app) if crate::config::plain_name("app", &app).is_ok() => {
                    parsed.app = Some(app)
                }
                _ => bail!("`--app` needs an app's name"),
            },
            id if matches!(command, "log" | "rollback") && parsed.id.is_none() && name(id) => {
                parsed.id = Some(id.to_string());
            }
            commit
                if command == "deploy"
                    && parsed.id.is_none()
                    && (7..=64).contains(&commit.len())
                    && commit.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                parsed.id = Some(commit.to_string());
            }
            other => bail!(
                "`{}` is not allowed for `ats-hook {command}`",
                other.escape_debug()
            ),
        }
    }
    if command == "deploy" && parsed.id.is_none() {
        bail!("`ats-hook deploy` needs the commit, as a hex id");
    }
    Ok(parsed)
}

/// Words separated by single spaces, each plain or quoted the way git quotes a path.
pub fn split_words(text: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // The end of this word: the first space outside quotes (`\'` outside them is a quote).
        let mut quoted = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if !quoted => escaped = true,
                '\'' => quoted = !quoted,
                ' ' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        if quoted {
            bail!("unbalanced quotes");
        }
        let word = &rest[..end];
        if word.is_empty() {
            bail!("words must be separated by one space");
        }
        words.push(parse_path(word)?);
        rest = rest[end..].strip_prefix(' ').unwrap_or("");
        if rest.is_empty() && text.ends_with(' ') {
            bail!("words must be separated by one space");
        }
    }
    Ok(words)
}

/// The folder git resolves relative repository paths from: the key user's home.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

pub fn parse_request(request: &str) -> Result<(Service, String)> {
    if request.is_empty() {
        bail!("no command given");
    }
    if request.chars().any(|c| c.is_control()) {
        bail!("the command holds control characters");
    }
    let services = [
        ("git-receive-pack ", Service::ReceivePack),
        ("git receive-pack ", Service::ReceivePack),
        ("git-upload-pack ", Service::UploadPack),
        ("git upload-pack ", Service::UploadPack),
    ];
    if let Some(rest) = request.strip_prefix("git-lfs-transfer ") {
        let (path, operation) = rest
            .rsplit_once(' ')
            .context("git-lfs-transfer takes the repository and `upload` or `download`")?;
        let operation = super::lfs::transfer::Operation::parse(operation).with_context(|| {
            format!(
                "git-lfs-transfer takes `upload` or `download`, not `{}`",
                operation.escape_debug()
            )
        })?;
        return Ok((Service::LfsTransfer(operation), parse_path(path)?));
    }
    let Some((service, rest)) = services
        .iter()
        .find_map(|(prefix, service)| request.strip_prefix(prefix).map(|rest| (*service, rest)))
    else {
        bail!("only git-receive-pack, git-upload-pack and git-lfs-transfer are allowed");
    };
    Ok((service, parse_path(rest)?))
}

/// One argument, quoted the way git quotes it (`'it'\''s'`), or a plain path.
pub fn parse_path(text: &str) -> Result<String> {
    if !text.starts_with('\'') {
        let plain = !text.is_empty()
            && text.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~' | '+')
            });
        if !plain {
            bail!("the repository must be one path argument");
        }
        return Ok(text.to_string());
    }
    let mut path = String::new();
    let mut rest = text;
    loop {
        let Some(inner) = rest.strip_prefix('\'') else {
            bail!("the repository must be one path argument")
        };
        let Some(end) = inner.find('\'') else {
            bail!("unbalanced quotes")
        };
        path.push_str(&inner[..end]);
        rest = &inner[end + 1..];
        if rest.is_empty() {
            return Ok(path);
        }
        // Between quoted parts git writes only `\'` or `\!`.
        match rest.as_bytes() {
            [b'\\', c @ (b'\'' | b'!'), ..] => {
                path.push(*c as char);
                rest = &rest[2..];
            }
            _ => bail!("the repository must be one path argument"),
        }
    }
}

/// Whether `path`, as git would resolve it, is the allowed repository.
pub fn resolves_to(path: &str, home: &Path, allowed: &Path) -> Result<()> {
    match resolve(path, home) {
        Ok(real) if real == allowed => Ok(()),
        Err(err) if path.contains("..") || path.starts_with("~") && !path.starts_with("~/") => {
            Err(err)
        }
        _ => bail!("`{path}` is not that repository"),
    }
}

/// The repository `path` names, as git resolves it: from `home`, `~/` allowed, with or
/// without `.git`; `..` refused.
pub fn resolve(path: &str, home: &Path) -> Result<PathBuf> {
    let path = Path::new(path);
    if path.components().any(|c| c == Component::ParentDir) {
        bail!("`..` is not allowed in the path");
    }
    let path = match path.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) if path.to_string_lossy().starts_with('~') => bail!("`~user` paths are not allowed"),
        Err(_) => home.join(path),
    };
    let mut with_git = path.clone().into_os_string();
    with_git.push(".git");
    for candidate in [path.clone(), PathBuf::from(with_git)] {
        if let Ok(real) = candidate.canonicalize() {
            if real.join("objects").is_dir() {
                return Ok(real);
            }
        }
    }
    bail!("`{}` is not a repository", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_git_sends() {
        assert_eq!(
            parse_request("git-receive-pack '/home/d/app.git'").unwrap(),
            (Service::ReceivePack, "/home/d/app.git".to_string())
        );
        assert_eq!(
            parse_request("git upload-pack 'app.git'").unwrap(),
            (Service::UploadPack, "app.git".into())
        );
        assert_eq!(
            parse_request("git-upload-pack '/a/it'\\''s'").unwrap().1,
            "/a/it's"
        );
        assert_eq!(
            parse_request("git-receive-pack app.git").unwrap().1,
            "app.git"
        );
        use crate::access::lfs::transfer::Operation;
        assert_eq!(
            parse_request("git-lfs-transfer /home/d/app.git upload").unwrap(),
            (
                Service::LfsTransfer(Operation::Upload),
                "/home/d/app.git".to_string()
            )
        );
        assert_eq!(
            parse_request("git-lfs-transfer 'it'\\''s.git' download").unwrap(),
            (Service::LfsTransfer(Operation::Download), "it's.git".into())
        );
        for bad in [
            "git-lfs-transfer app.git lock",
            "git-lfs-transfer app.git",
            "git-lfs-transfer app.git upload; id",
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for request in [
            "",
            "ls",
            "sh -c 'git-receive-pack app.git'",
            "git-receive-pack 'app.git' 'other.git'",
            "git-receive-pack 'app.git'; rm -rf ~",
            "git-receive-pack 'app.git' && id",
            "git-receive-pack $(id)",
            "git-receive-pack `id`",
            "git-receive-pack 'app.git",
            "git-receive-pack 'a'x'b'",
            "git-upload-archive 'app.git'",
            "git-receive-pack 'app.git'\nid",
        ] {
            assert!(parse_request(request).is_err(), "{request:?} was accepted");
        }
    }

    #[test]
    fn accepts_ats_hook_reading_commands() {
        assert_eq!(
            parse_ats_request("ats-hook status --repo '/srv/app.git' --json").unwrap(),
            AtsRequest {
                command: "status",
                repo: Some("/srv/app.git".into()),
                json: true,
                id: None,
                skip: Vec::new(),
                no_restart: false,
                app: None,
            }
        );
        assert_eq!(
            parse_ats_request("ats-hook log 6aeda4b --repo 'app.git'").unwrap(),
            AtsRequest {
                command: "log",
                repo: Some("app.git".into()),
                json: false,
                id: Some("6aeda4b".into()),
                skip: Vec::new(),
                no_restart: false,
                app: None,
            }
        );
        assert_eq!(
            parse_ats_request("ats-hook rollback 20261122T045500Z-723cd4e")
                .unwrap()
                .id
                .as_deref(),
            Some("20261122T045500Z-723cd4e")
        );
        assert_eq!(
            parse_ats_request(
                "ats-hook deploy 3f2a9c81d0e4b5a6978877665544332211009988 --skip migrate --skip db-seed --no-restart"
            )
            .unwrap(),
            AtsRequest {
                command: "deploy",
                repo: None,
                json: false,
                id: Some("3f2a9c81d0e4b5a6978877665544332211009988".into()),
                skip: vec!["migrate".into(), "db-seed".into()],
                no_restart: true,
                app: None,
            }
        );
        assert_eq!(
            parse_ats_request("ats-hook releases --repo '/a/it'\\''s.git'")
                .unwrap()
                .repo
                .as_deref(),
            Some("/a/it's.git")
        );
    }

    #[test]
    fn refuses_other_ats_hook_commands_and_options() {
        for request in [
            "ats-hook",
            "ats-hook deploy",
            "ats-hook deploy main",
            "ats-hook deploy 3f2a9c8 --json",
            "ats-hook deploy 3f2a9c8 abcdef0",
            "ats-hook deploy 3f2a9c",
            "ats-hook deploy 3f2a9c8 --skip",
            "ats-hook deploy 3f2a9c8 --skip --no-restart",
            "ats-hook deploy 3f2a9c8 --skip 'a;b'",
            "ats-hook deploy 3f2a9c8 --note hi",
            "ats-hook deploy 3f2a9c8 --dry-run",
            "ats-hook deploy 3f2a9c8 --ref refs/heads/x",
            "ats-hook deploy --skip migrate",
            "ats-hook install --repo /tmp/x",
            "ats-hook status --config /tmp/evil.toml",
            "ats-hook status --repo",
            "ats-hook status --repo 'a' --repo 'b'",
            "ats-hook status extra",
            "ats-hook log a b",
            "ats-hook log --verbose",
            "ats-hook log ../x",
            "ats-hook log 'x;id'",
            "ats-hook rollback --json",
            "ats-hook status; id",
            "ats-hook status  --json",
            "ats-hook status --json ",
            "ats-hook status --repo 'app.git",
            "ats-hook status\n",
            "ats-hook keys add",
        ] {
            assert!(
                parse_ats_request(request).is_err(),
                "{request:?} was accepted"
            );
        }
    }

    #[test]
    fn paths_resolve_like_git() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        std::fs::create_dir_all(home.join("app.git/objects")).unwrap();
        std::fs::create_dir_all(home.join("other.git/objects")).unwrap();
        let allowed = home.join("app.git").canonicalize().unwrap();
        for ok in [
            "app.git",
            "app",
            "~/app.git",
            "app.git/",
            &format!("{}/app.git", home.display()),
        ] {
            assert!(resolves_to(ok, home, &allowed).is_ok(), "{ok}");
        }
        for bad in [
            "other.git",
            "app.git/../other.git",
            "~root/app.git",
            "/etc",
            "app.git/..",
        ] {
            assert!(resolves_to(bad, home, &allowed).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_commands_never_panic_nor_pass_something_else() {
        let valid = [
            "git-receive-pack '/srv/app.git'",
            "git-upload-pack 'app.git'",
            "git receive-pack '~/it'\\''s.git'",
            "git-receive-pack app.git",
            "git-receive-pack '/srv/app.git'; rm -rf /",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        crate::sys::fuzz::check(
            "ssh-gate commands",
            crate::sys::fuzz::inputs(valid),
            |bytes| {
                let request = String::from_utf8_lossy(&bytes);
                if let Ok((_, path)) = parse_request(&request) {
                    // Only a git service with one path argument gets through.
                    proptest::prop_assert!(
                        request.starts_with("git-receive-pack ")
                            || request.starts_with("git receive-pack ")
                            || request.starts_with("git-upload-pack ")
                            || request.starts_with("git upload-pack ")
                    );
                    proptest::prop_assert!(!path.chars().any(|c| c.is_control()));
                    proptest::prop_assert!(!request.contains('\n'));
                }
                Ok(())
            },
        );
    }
}
