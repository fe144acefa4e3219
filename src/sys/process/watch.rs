//! The watcher that ties children to ats-hook's life (see the parent module): one more
//! ats-hook process, told each child group as it starts and ends over a pipe only this process
//! holds, that stops the groups still running when the pipe closes.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{signal_group, GRACE};

/// Whether children are tied to this process's life: set by the binary (`run`), never in unit
/// tests, whose binary is not ats-hook.
static TIED: AtomicBool = AtomicBool::new(false);
/// The write end of the watcher's pipe, once it runs (close-on-exec: no child holds it).
static WATCHER: std::sync::Mutex<Option<std::process::ChildStdin>> = std::sync::Mutex::new(None);

/// Ties every child started from now on to this process's life (see the module's doc).
pub fn tie_children_to_this_process() {
    TIED.store(true, Ordering::SeqCst);
}

/// Tells the watcher that `pgid` runs (`true`) or ended; starts the watcher first when none
/// runs. A watcher that cannot start leaves children untied, as before, and says why.
pub(super) fn tell_watcher(pgid: Pid, running: bool) {
    if !TIED.load(Ordering::SeqCst) {
        return;
    }
    let mut watcher = WATCHER.lock().unwrap_or_else(|e| e.into_inner());
    if watcher.is_none() {
        match start_watcher() {
            Ok(stdin) => *watcher = Some(stdin),
            Err(err) => {
                tracing::warn!("steps are not tied to this deploy's life: {err:#}");
                TIED.store(false, Ordering::SeqCst);
                return;
            }
        }
    }
    if let Some(stdin) = watcher.as_mut() {
        let line = format!("{}{}\n", if running { '+' } else { '-' }, pgid.as_raw());
        let _ = std::io::Write::write_all(stdin, line.as_bytes());
    }
}

fn start_watcher() -> Result<std::process::ChildStdin> {
    let exe = std::env::current_exe().context("failed to find the ats-hook binary")?;
    let mut child = std::process::Command::new(&exe)
        // A hook copied in place is named `post-receive`: it must not read as one.
        .arg0("ats-hook")
        .arg("watch-groups")
        .env_clear()
        .stdin(std::process::Stdio::piped())
        // Never the pusher's pipe: git waits for every holder of it to close.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("failed to start `{} watch-groups`", exe.display()))?;
    child.stdin.take().context("the watcher has no input")
}

/// The watcher (`ats-hook watch-groups`): reads `+PGID` and `-PGID` lines until its input
/// closes, then stops the groups still running: SIGTERM, and SIGKILL after `GRACE`.
pub fn watch_groups(input: impl BufRead) -> Result<()> {
    // Its own session: a hang-up of the hook's terminal or group is not its own.
    let _ = nix::unistd::setsid();
    let mut running = std::collections::BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (sign, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<i32>() else {
            continue;
        };
        // Never a group of one's own, nor every process (`0`, `-1`).
        if pgid <= 1 {
            continue;
        }
        match sign {
            "+" => running.insert(pgid),
            "-" => running.remove(&pgid),
            _ => false,
        };
    }
    let groups: Vec<Pid> = running.into_iter().map(Pid::from_raw).collect();
    for &pgid in &groups {
        signal_group(Some(pgid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && groups.iter().any(|&g| killpg(g, None).is_ok()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pgid in &groups {
        signal_group(Some(pgid), Signal::SIGKILL);
    }
    Ok(())
}

/// Tells the watcher a group ended when dropped, on every way out of `stream`.
pub(super) struct Watched(pub(super) Option<Pid>);

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            tell_watcher(pgid, false);
        }
    }
}
