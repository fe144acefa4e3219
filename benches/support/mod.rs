//! What both benchmarks share: hermetic git, timing with the disk settled, medians, the hook's
//! own record.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ats-hook");

#[path = "../../tests/support/rng.rs"]
pub mod rng;
pub use rng::Rng;

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
    time_unsettled(cmd)
}

/// Runs a command, returning its wall time, with whatever the disk has yet to write.
pub fn time_unsettled(cmd: &mut Command) -> Duration {
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

/// The app's tree: nested folders of source-like files, and a few large files.
pub fn generate(work: &Path, rng: &mut Rng) -> (usize, u64) {
    let (mut files, mut bytes) = (0, 0u64);
    for app in 0..12 {
        for module in 0..8 {
            for kind in ["models", "views", "templates", "static", "tests"] {
                let dir = work.join(format!("apps/app{app}/module{module}/{kind}"));
                std::fs::create_dir_all(&dir).unwrap();
                for n in 0..10 {
                    let len = 2_000 + (rng.next() % 18_000) as usize;
                    std::fs::write(dir.join(format!("file{n}.py")), rng.text(len)).unwrap();
                    files += 1;
                    bytes += len as u64;
                }
            }
        }
    }
    std::fs::create_dir_all(work.join("assets/media")).unwrap();
    for n in 0..12 {
        let len = 400_000 + (rng.next() % 200_000) as usize;
        std::fs::write(
            work.join(format!("assets/media/bundle{n}.js")),
            rng.text(len),
        )
        .unwrap();
        files += 1;
        bytes += len as u64;
    }
    std::fs::write(work.join("requirements.txt"), "django==5.0\ngunicorn\n").unwrap();
    (files + 1, bytes)
}

/// Peak resident memory of a command, in KiB: run from a child of ours that has no other
/// children, so `RUSAGE_CHILDREN` is that command's (and its own children's) alone.
pub fn peak_rss(cmd_line: &[&str], dir: &Path) -> u64 {
    let out = hermetic(Command::new(std::env::current_exe().unwrap()))
        .arg("--measure-rss")
        .args(cmd_line)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub fn measure_rss(args: &[String]) -> ! {
    let status = Command::new(&args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{args:?} failed");
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    println!("{}", usage.max_rss());
    std::process::exit(0)
}

/// 60,000 small files: 600 folders of 100, under six top folders.
pub fn wide_tree(wide: &Path) {
    for d in 0..600 {
        let dir = wide.join(format!("d{}/sub{d}", d / 100));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f}.txt")), format!("{d} {f}\n")).unwrap();
        }
    }
}
