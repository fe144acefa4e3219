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

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::access::ssh_gate::{home, parse_ats_request, parse_request, resolves_to, Service};
use crate::sys::output;
use crate::sys::process::Cmd;

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
    if let Some(app) = &parsed.app {
        cmd = cmd.arg("--app").arg(app);
    }
    if let Some(name) = key_name {
        // A rollback's or a deploy's record names the key that asked for it.
        cmd = cmd.env("ATS_PUSHER", name);
    }
    Err(cmd.exec())
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
