//! `ats-hook ssh-gate --repo PATH`: the forced command of a deploy key.
//!
//! sshd runs it instead of whatever the client asked for, with the request in
//! `SSH_ORIGINAL_COMMAND`. Only git's own transport commands for exactly one repository pass:
//! `git-receive-pack` / `git-upload-pack` (or `git receive-pack` / `git upload-pack`) with one
//! path argument, quoted as git quotes it. The path is resolved the way git resolves it
//! (relative to the home folder, `~/`, an optional `.git` suffix) and must name the configured
//! repository; `..` is refused outright.
//!
//! The pusher may also read what the server did with the push: `ats-hook status`, `releases`
//! and `log [ID]` (with `--json`), and, for a key added with `--allow-rollback`, `ats-hook
//! rollback [RELEASE]`. `ats-hook status --remote NAME` on the pusher's machine sends these.
//! A key that may push may also deploy again a commit the repository holds, `ats-hook deploy
//! COMMIT` (a full or abbreviated hex id, with `--skip STEP` and `--no-restart`): a push can
//! deploy any commit, and git runs no hook for a push that moves no branch, such as the
//! branch's own tip after a rollback (the rolling deploy of contrib/ansible does this).
//! They run against this repository whatever `--repo` the request names (which must resolve to
//! it too); no other option passes. Everything else gets one line and a non-zero exit.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::sys::output;
use crate::sys::process::Cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    ReceivePack,
    UploadPack,
}

/// A command of ats-hook's own that a deploy key may run.
#[derive(Debug, PartialEq, Eq)]
struct AtsRequest {
    command: &'static str,
    repo: Option<String>,
    json: bool,
    id: Option<String>,
    skip: Vec<String>,
    no_restart: bool,
}

pub fn run(repo: &Path, key_name: Option<&str>, allow_rollback: bool) -> Result<ExitCode> {
    let allowed = repo.canonicalize().with_context(|| {
        format!(
            "the deploy key's repository `{}` does not exist",
            repo.display()
        )
    })?;
    let request = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    if request.starts_with("ats-hook ") {
        return run_ats(&allowed, &request, key_name, allow_rollback);
    }
    let (service, path) = match parse_request(&request) {
        Ok(parsed) => parsed,
        Err(err) => return Ok(refuse(&allowed, &request, &format!("{err:#}"))),
    };
    let home = home();
    if let Err(err) = resolves_to(&path, &home, &allowed) {
        return Ok(refuse(&allowed, &request, &format!("{err:#}")));
    }
    let mut cmd = Cmd::new("git").dir(&allowed);
    cmd = match service {
        Service::ReceivePack => cmd.arg("receive-pack"),
        Service::UploadPack => cmd.arg("upload-pack"),
    };
    cmd = cmd.arg(&allowed);
    if let Some(protocol) = std::env::var_os("GIT_PROTOCOL") {
        // The client's protocol version request, which sshd passes when it accepts it.
        cmd = cmd.env("GIT_PROTOCOL", protocol);
    }
    if let Some(name) = key_name {
        // The deploy's history names the key that pushed.
        cmd = cmd.env("ATS_PUSHER", name);
    }
    Err(cmd.exec())
}

/// Runs one of ats-hook's read-only commands (or `rollback`, when the key may) for the allowed
/// repository.
fn run_ats(
    allowed: &Path,
    request: &str,
    key_name: Option<&str>,
    allow_rollback: bool,
) -> Result<ExitCode> {
    let parsed = match parse_ats_request(request) {
        Ok(parsed) => parsed,
        Err(err) => return Ok(refuse(allowed, request, &format!("{err:#}"))),
    };
    if parsed.command == "rollback" && !allow_rollback {
        return Ok(refuse(
            allowed,
            request,
            "this key may not roll back: add it with `ats-hook keys add --allow-rollback`",
        ));
    }
    if let Some(path) = &parsed.repo {
        if let Err(err) = resolves_to(path, &home(), allowed) {
            return Ok(refuse(allowed, request, &format!("{err:#}")));
        }
    }
    let exe = std::env::current_exe().context("failed to find the ats-hook binary")?;
    let mut cmd = Cmd::new(exe)
        .dir(allowed)
        .arg(parsed.command)
        .arg("--repo")
        .arg(allowed);
    if parsed.json {
        cmd = cmd.arg("--json");
    }
    if let Some(id) = &parsed.id {
        cmd = cmd.arg(id);
    }
    for step in &parsed.skip {
        cmd = cmd.arg("--skip").arg(step);
    }
    if parsed.no_restart {
        cmd = cmd.arg("--no-restart");
    }
    if let Some(name) = key_name {
        // A rollback's or a deploy's record names the key that asked for it.
        cmd = cmd.env("ATS_PUSHER", name);
    }
    Err(cmd.exec())
}

/// `ats-hook status|releases|log|rollback|deploy` with `--repo PATH` (quoted as git quotes
/// paths), `--json` for the reading ones, an id for `log` and `rollback`, and for `deploy` a
/// commit (hex), `--skip STEP` and `--no-restart`; nothing else.
fn parse_ats_request(request: &str) -> Result<AtsRequest> {
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
fn split_words(text: &str) -> Result<Vec<String>> {
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
fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn refuse(allowed: &Path, request: &str, why: &str) -> ExitCode {
    let asked = if request.is_empty() {
        "an interactive shell".to_string()
    } else {
        format!("`{}`", request.escape_debug())
    };
    tracing::warn!(request, "ssh-gate refused: {why}");
    output::error(format!(
        "this deploy key may only push to or fetch from `{}` and read its deploys; refused {asked}: {why}",
        allowed.display()
    ));
    ExitCode::FAILURE
}

fn parse_request(request: &str) -> Result<(Service, String)> {
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
    let Some((service, rest)) = services
        .iter()
        .find_map(|(prefix, service)| request.strip_prefix(prefix).map(|rest| (*service, rest)))
    else {
        bail!("only git-receive-pack and git-upload-pack are allowed");
    };
    Ok((service, parse_path(rest)?))
}

/// One argument, quoted the way git quotes it (`'it'\''s'`), or a plain path.
fn parse_path(text: &str) -> Result<String> {
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
fn resolves_to(path: &str, home: &Path, allowed: &Path) -> Result<()> {
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
        if candidate.canonicalize().is_ok_and(|real| real == allowed) {
            return Ok(());
        }
    }
    bail!("`{}` is not that repository", path.display())
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
        std::fs::create_dir_all(home.join("app.git")).unwrap();
        std::fs::create_dir_all(home.join("other.git")).unwrap();
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
