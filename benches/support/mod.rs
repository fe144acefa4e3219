//! What both benchmarks share: hermetic git, timing with the disk settled, medians, the hook's
//! own record.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ats-hook");

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = hermetic(Command::new("git"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn hermetic(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars() {
        if key.starts_with("GIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com");
    cmd
}

/// Runs a command, returning its wall time; panics on failure. Dirty pages of earlier samples
/// are written out first, so no sample pays for another's writes.
pub fn time(cmd: &mut Command) -> Duration {
    let synced = Command::new("sync").status().expect("sync");
    assert!(synced.success());
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The hook's own record of the last deploy.
pub fn last_record(root: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(root.join(".ats-hook/deploys.jsonl")).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// A bare repository `bare` with ats-hook as its post-receive hook and `config` as its
/// `ats-hook.toml`.
pub fn hooked_repository(base: &Path, bare: &Path, config: &str) {
    git(
        base,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    std::os::unix::fs::symlink(BIN, bare.join("hooks/post-receive")).unwrap();
    std::fs::write(bare.join("ats-hook.toml"), config).unwrap();
}

/// Whether a target is met, as the tables print it.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}
