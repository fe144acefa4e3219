//! A server or worker that ats-hook starts and that outlives it: run detached, in a process
//! group of its own that it leads, its output in a log file, never the pusher's pipes. Known
//! by its pid and when that process started, so a reused pid is never taken for it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::sys::process::Cmd;
use crate::sys::procs;

/// A started command: the pid that leads its process group, and when that process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Daemon {
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
}

impl Daemon {
    /// Runs `command` through the shell in `dir` with `env`, its output appended to `log`.
    pub fn spawn(
        command: &str,
        dir: &Path,
        env: &BTreeMap<String, String>,
        log: &Path,
    ) -> Result<Daemon> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open `{}`", log.display()))?;
        let pid = Cmd::shell(command)
            .dir(dir)
            .envs(env)
            .spawn_detached_to(Some(file))?;
        let pid = i32::try_from(pid).context("a pid out of range")?;
        Ok(Daemon {
            pid,
            started: procs::start_ticks(pid),
        })
    }

    /// Whether it still runs (a zombie does not).
    pub fn runs(&self) -> bool {
        procs::alive(self.pid)
            && (self.started.is_none() || procs::start_ticks(self.pid) == self.started)
    }

    /// Stops its whole process group: TERM, then up to `limit` for it to be gone, then KILL.
    /// Says which it took; `None` when it was not running.
    pub fn stop(&self, limit: Duration) -> Option<&'static str> {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if !self.runs() {
            reap(self.pid);
            return None;
        }
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGTERM);
        let clock = Instant::now();
        loop {
            reap(self.pid);
            if procs::group_members(self.pid).is_empty() {
                return Some("gracefully");
            }
            if clock.elapsed() >= limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let clock = Instant::now();
        while !procs::group_members(self.pid).is_empty() && clock.elapsed() < Duration::from_secs(5)
        {
            reap(self.pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        Some("by KILL after its stop timeout")
    }
}

/// Collects the exit of a process this one started, so it leaves no zombie.
fn reap(pid: i32) {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let _ = waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// The last `lines` lines of a log.
pub fn tail(log: &Path, lines: usize) -> Vec<String> {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| line.to_string())
        .collect()
}
