//! The test helper: a temporary server (a bare repository with ats-hook as its hook, and a
//! deploy root) and clones that push to it with the real `git` client.
//!
//! Every process runs in a hermetic environment: no system or global git config, a fixed
//! identity, a `HOME` inside the test's folder, and none of the caller's `GIT_*` variables.

#![allow(dead_code)]

pub mod apps;
pub mod docker;
pub mod files;
mod git;
mod http;
pub mod proxy;
pub mod rng;
mod server;
pub mod system;

pub use git::Clone;
pub use http::{closed_port, HttpServer, TestCa};
pub use server::Server;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pretty_assertions::assert_eq;

pub const BIN: &str = env!("CARGO_BIN_EXE_ats-hook");

/// A command with the hermetic environment.
pub fn command(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("USER", "tester")
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        // The Compose tests' private engine (tests/docker-up), as a server's own would be.
        .env("DOCKER_HOST", docker::host());
    cmd
}

/// What a finished process left: its status and output, with assertions that print both.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn show(&self) -> String {
        format!(
            "{} -> {:?}\n--- stdout\n{}--- stderr\n{}",
            self.what,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
    #[track_caller]
    pub fn success(&self) -> &Self {
        assert!(
            self.output.status.success(),
            "expected success:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn failure(&self) -> &Self {
        assert!(
            !self.output.status.success(),
            "expected failure:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.output.status.code(), Some(code), "{}", self.show());
        self
    }
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn stderr_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stderr().contains(needle),
            "stderr has {needle:?}:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout().contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn stdout_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout().contains(needle),
            "stdout has {needle:?}:\n{}",
            self.show()
        );
        self
    }
    /// The `remote:` lines git showed the pusher, without the prefix and git's padding.
    pub fn remote_lines(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter_map(|line| line.strip_prefix("remote: "))
            .map(|line| line.trim_end().to_string())
            .collect()
    }
    /// The last line ats-hook printed.
    pub fn summary(&self) -> String {
        let lines = self.remote_lines();
        let from_remote = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("ats-hook: "))
            .cloned();
        from_remote.unwrap_or_else(|| {
            self.stderr()
                .lines()
                .rev()
                .find(|l| l.starts_with("ats-hook: "))
                .unwrap_or("")
                .to_string()
        })
    }
}

pub fn run(cmd: &mut Command, what: impl Into<String>) -> Run {
    let output = cmd.stdin(Stdio::null()).output().expect("failed to spawn");
    Run {
        what: what.into(),
        output,
    }
}

/// The watchers (`ats-hook watch-groups`) whose parent is the hook `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid: i32 = after
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == pid && String::from_utf8_lossy(&cmdline).contains("watch-groups") {
            found.push(child);
        }
    }
    found
}

/// Sends `signal` to process `pid`, which must exist.
#[track_caller]
pub fn send_signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|err| panic!("cannot send {signal} to {pid}: {err}"));
}

/// A child process killed when the test ends, however it ends.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `check` holds.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for a step to write a pid into `path`, then reads it.
#[track_caller]
pub fn pid_in(path: &Path) -> i32 {
    wait_for(
        &format!("a pid in {}", path.display()),
        Duration::from_secs(30),
        || std::fs::read_to_string(path).is_ok_and(|t| t.ends_with('\n')),
    );
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether a process is running (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Whether CI demands that every component be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The `run:` script of the last step of the `deploy` job in contrib/github-actions/`file`,
/// after the checks every shipped workflow passes and `checks` (Python, with `doc`, `deploy`,
/// the job, and `env`, the step's environment, at hand).
pub fn workflow_deploy_script(file: &str, checks: &str) -> String {
    let workflow = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/github-actions")
        .join(file);
    let script = format!(
        r#"
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
jobs = doc["jobs"]
assert set(jobs) == {{"lint-and-test", "deploy"}}, jobs.keys()
deploy = jobs["deploy"]
assert deploy["needs"] == "lint-and-test"
assert "refs/heads/main" in deploy["if"]
step = deploy["steps"][-1]
env = step["env"]
{checks}
print(step["run"], end="")
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&workflow)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{file} does not parse as expected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
