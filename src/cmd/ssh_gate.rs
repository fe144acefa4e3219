//! `ats-hook ssh-gate --repo PATH`: the forced command of a deploy key.
//!
//! sshd runs it instead of whatever the client asked for, with the request in
//! `SSH_ORIGINAL_COMMAND`. Only git's own transport commands for exactly one repository pass:
//! `git-receive-pack` / `git-upload-pack` (or `git receive-pack` / `git upload-pack`) with one
//! path argument, quoted as git quotes it. The path is resolved the way git resolves it
//! (relative to the home folder, `~/`, an optional `.git` suffix) and must name the configured
//! repository; `..` is refused outright. `git-lfs-transfer PATH upload|download` (git-lfs's
//! SSH protocol) is served here for that repository too, uploads only for a key that may push.
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

use crate::access::lfs::transfer::Operation;
use crate::access::lfs::Store;
use crate::access::ssh_gate::{home, parse_ats_request, parse_request, resolves_to, Service};
use crate::sys::output;
use crate::sys::process::Cmd;

/// What a key may do beyond fetching and reading.
#[derive(Debug, Clone, Copy)]
pub struct May {
    /// Push (and send Git LFS objects), and deploy again a commit the repository holds.
    pub push: bool,
    pub rollback: bool,
}

pub fn run(repo: &Path, key_name: Option<&str>, may: May) -> Result<ExitCode> {
    let allowed = repo.canonicalize().with_context(|| {
        format!(
            "the deploy key's repository `{}` does not exist",
            repo.display()
        )
    })?;
    let request = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    if request.starts_with("ats-hook ") {
        return run_ats(&allowed, &request, key_name, may);
    }
    // git-lfs asks for this when `git-lfs-transfer` was refused: say why that was.
    if let Some(rest) = request.strip_prefix("git-lfs-authenticate ") {
        let why = if rest.ends_with(" upload") && !may.push {
            "this key may only fetch (it was added with `--read-only`)"
        } else {
            "Git LFS goes over `git-lfs-transfer` here (git-lfs 3.0 or later), not over HTTP"
        };
        return Ok(refuse(&allowed, &request, why));
    }
    let (service, path) = match parse_request(&request) {
        Ok(parsed) => parsed,
        Err(err) => return Ok(refuse(&allowed, &request, &format!("{err:#}"))),
    };
    let home = home();
    if let Err(err) = resolves_to(&path, &home, &allowed) {
        return Ok(refuse(&allowed, &request, &format!("{err:#}")));
    }
    let pushes = matches!(
        service,
        Service::ReceivePack | Service::LfsTransfer(Operation::Upload)
    );
    if pushes && !may.push {
        return Ok(refuse(
            &allowed,
            &request,
            "this key may only fetch (it was added with `--read-only`)",
        ));
    }
    let mut cmd = Cmd::new("git").dir(&allowed);
    cmd = match service {
        Service::ReceivePack => cmd.arg("receive-pack"),
        Service::UploadPack => cmd.arg("upload-pack"),
        Service::LfsTransfer(operation) => return serve_lfs(&allowed, operation),
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
fn run_ats(allowed: &Path, request: &str, key_name: Option<&str>, may: May) -> Result<ExitCode> {
    let parsed = match parse_ats_request(request) {
        Ok(parsed) => parsed,
        Err(err) => return Ok(refuse(allowed, request, &format!("{err:#}"))),
    };
    if parsed.command == "deploy" && !may.push {
        return Ok(refuse(
            allowed,
            request,
            "this key may only fetch and read (it was added with `--read-only`)",
        ));
    }
    if parsed.command == "rollback" && !may.rollback {
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

/// Git LFS objects of the repository, sent or fetched over this SSH session's stdin and stdout.
fn serve_lfs(repo: &Path, operation: Operation) -> Result<ExitCode> {
    let store = Store::of_repo(repo);
    crate::access::lfs::transfer::serve(
        &store,
        operation,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    )
    .context("git lfs transfer failed")?;
    Ok(ExitCode::SUCCESS)
}

/// `git-lfs-transfer PATH OPERATION` for a login that runs commands itself: the repository
/// `PATH` names, from the home folder, as git resolves it.
pub fn lfs_login(path: &str, operation: &str) -> Result<ExitCode> {
    let operation = Operation::parse(operation).with_context(|| {
        format!("git-lfs-transfer takes `upload` or `download`, not `{operation}`")
    })?;
    let repo = crate::access::ssh_gate::resolve(path, &home())
        .with_context(|| format!("git-lfs-transfer: no repository at `{path}`"))?;
    serve_lfs(&repo, operation)
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
