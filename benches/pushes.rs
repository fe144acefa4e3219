//! Whole pushes, timed as a user times them: the wall time of `git push` on the client, for
//! three servers in the same run, on the same commits:
//!
//! - ats-hook as the post-receive hook (defaults: `keep_releases = 5`, no steps);
//! - the hand-written hook, `git --work-tree=… checkout -f` in place (not atomic);
//! - Capistrano's way: `git archive | tar -x` into a fresh release folder, `current` switched,
//!   five releases kept.
//!
//! Run with `cargo bench --bench pushes` (add `-- --quick` for fewer pushes, `--only burst` for
//! one scenario, `--wide-only` for the 60,000 files alone, `--dir /mnt/btrfs` to run on the
//! filesystem mounted there instead of the temporary folder's). Two trees: one
//! shaped like a large web app (about 4,800 files, nested folders, a few large files: the shape
//! of saleor's, generated, since the machines this runs on reach no source host), and 60,000
//! small files. Four scenarios, each on new servers: the first seven pushes after the first
//! (three seconds apart); steady state (ten pushes after eight, three seconds apart); a burst of
//! ten pushes with no pause; ten pushes 1.5 s apart. Commits change one or two files, in turn.
//! Each way's series runs on its own (a burst is back to back for that server alone), the ways
//! in turns, and each starts once the one before is settled (its background work done, the
//! disk written). It prints every push's time, the median, p95 and worst of each way, the ratios
//! against the in-place hook and `git archive | tar`, the targets, and the hook's peak memory.
//! Everything happens under one temporary folder, removed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod support;
use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    AtsHook,
    InPlace,
    Archive,
}

impl Way {
    const ALL: [Way; 3] = [Way::AtsHook, Way::InPlace, Way::Archive];

    fn name(self) -> &'static str {
        match self {
            Way::AtsHook => "ats-hook",
            Way::InPlace => "in-place checkout",
            Way::Archive => "`git archive \\| tar`",
        }
    }
}

/// A new server of `way`: a bare repository with its hook, and its deploy folder.
fn server(base: &Path, name: &str, way: Way) -> PathBuf {
    let bare = base.join(format!("{name}.git"));
    let root = base.join(name);
    match way {
        Way::AtsHook => {
            hooked_repository(
                base,
                &bare,
                &format!("[deploy]\nroot = \"{}\"\n", root.display()),
            );
        }
        Way::InPlace | Way::Archive => {
            git(
                base,
                &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
            );
            std::fs::create_dir_all(&root).unwrap();
            let quoted = format!("'{}'", root.display());
            let script = match way {
                Way::InPlace => format!(
                    "#!/bin/sh\nwhile read old new ref; do\n  [ \"$ref\" = refs/heads/main ] || continue\n  \
                     git --work-tree={root} checkout -f -q \"$new\" -- .\ndone\n",
                    root = quoted
                ),
                _ => format!(
                    "#!/bin/sh\nset -e\nwhile read old new ref; do\n  [ \"$ref\" = refs/heads/main ] || continue\n  \
                     dir={root}/releases/$(date +%Y%m%d%H%M%S%N)\n  mkdir -p \"$dir\"\n  \
                     git archive \"$new\" | tar -x -C \"$dir\"\n  ln -sfn \"$dir\" {root}/current.new\n  \
                     mv -T {root}/current.new {root}/current\n  \
                     ls -1d {root}/releases/* | sort | head -n -5 | xargs -r rm -rf\ndone\n",
                    root = quoted
                ),
            };
            let hook = bare.join("hooks/post-receive");
            std::fs::write(&hook, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    bare
}

/// `git push` of `sha` as the server's `main`, its wall time; with `settle`, the disk's dirty
/// pages are written out first (a burst does not get that).
fn push(work: &Path, bare: &Path, sha: &str, settle: bool) -> Duration {
    let mut cmd = hermetic(Command::new("git"));
    cmd.args(["push", "-q"])
        .arg(bare)
        .arg(format!("{sha}:refs/heads/main"))
        .current_dir(work);
    if settle {
        time(&mut cmd)
    } else {
        time_unsettled(&mut cmd)
    }
}

/// A scenario: pushes before the timed ones, the timed ones, the pause before each.
struct Scenario {
    name: &'static str,
    warm: usize,
    timed: usize,
    pause: Duration,
}

/// The commits of a tree in `work`: the first holds it whole, each later one changes one or two
/// files (in turn) of `paths`.
fn commits(work: &Path, paths: &[&str], count: usize) -> Vec<String> {
    let mut shas = vec![git(work, &["rev-parse", "HEAD"])];
    for n in 1..count {
        let touched = if n % 2 == 0 { 2 } else { 1 };
        for k in 0..touched {
            let path = work.join(paths[(n + k) % paths.len()]);
            let mut text = std::fs::read(&path).unwrap();
            text.extend_from_slice(format!("\n# change {n}\n").as_bytes());
            std::fs::write(&path, text).unwrap();
        }
        git(work, &["commit", "-q", "-am", &format!("change {n}")]);
        shas.push(git(work, &["rev-parse", "HEAD"]));
    }
    shas
}

/// One way's series on a new server: the first push, the warm ones, then the timed ones.
fn series(
    base: &Path,
    work: &Path,
    shas: &[String],
    way: Way,
    s: &Scenario,
    tag: &str,
) -> Vec<Duration> {
    let name = format!("{tag}-{}-{:?}", s.name, way)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>();
    let bare = server(base, &name, way);
    push(work, &bare, &shas[0], true);
    for sha in &shas[1..=s.warm] {
        std::thread::sleep(s.pause);
        push(work, &bare, sha, true);
    }
    let burst = s.pause.is_zero();
    let times = shas[s.warm + 1..=s.warm + s.timed]
        .iter()
        .map(|sha| {
            std::thread::sleep(s.pause);
            push(work, &bare, sha, !burst)
        })
        .collect();
    settle(&base.join(name));
    times
}

/// Lets what a series left behind finish before the next one starts: ats-hook's background
/// preparer of a spare release (it holds the spare lock), then the disk's write-back.
fn settle(root: &Path) {
    let lock = root.join(".ats-hook/spare.lock");
    if lock.exists() {
        let waited = Command::new("flock")
            .args(["-w", "120"])
            .arg(&lock)
            .arg("true")
            .status()
            .expect("flock");
        assert!(
            waited.success(),
            "the spare preparer of {root:?} still runs"
        );
    }
    assert!(Command::new("sync").status().expect("sync").success());
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

struct Summary {
    median: Duration,
    p95: Duration,
    worst: Duration,
}

fn summary(samples: &[Duration]) -> Summary {
    Summary {
        median: median(samples.to_vec()),
        p95: percentile(samples, 0.95),
        worst: *samples.iter().max().unwrap(),
    }
}

/// Every scenario on one tree; returns whether every target was met.
fn tree(
    base: &Path,
    tag: &str,
    work: &Path,
    paths: &[&str],
    quick: bool,
    against_archive: bool,
) -> bool {
    let n = if quick { 5 } else { 10 };
    let scenarios = [
        Scenario {
            name: "first seven",
            warm: 0,
            timed: 7,
            pause: Duration::from_secs(3),
        },
        Scenario {
            name: "steady",
            warm: 8,
            timed: n,
            pause: Duration::from_secs(3),
        },
        Scenario {
            name: "burst",
            warm: 0,
            timed: n,
            pause: Duration::ZERO,
        },
        Scenario {
            name: "1.5 s apart",
            warm: 0,
            timed: n,
            pause: Duration::from_millis(1500),
        },
    ];
    let most = scenarios.iter().map(|s| s.warm + s.timed).max().unwrap();
    let shas = commits(work, paths, most + 1);
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .unwrap_or_default();
    let mut all_met = true;
    for (k, s) in scenarios.iter().enumerate() {
        if !s.name.contains(only.as_str()) {
            continue;
        }
        eprintln!("{tag}: {}…", s.name);
        // The ways in turns: which one goes first moves with each scenario.
        let mut times: Vec<(Way, Vec<Duration>)> = Vec::new();
        for i in 0..3 {
            let way = Way::ALL[(i + k) % 3];
            times.push((way, series(base, work, &shas, way, s, tag)));
        }
        let of = |way: Way| &times.iter().find(|(w, _)| *w == way).unwrap().1;
        let (ours, inplace, archive) = (of(Way::AtsHook), of(Way::InPlace), of(Way::Archive));
        println!();
        println!("{tag}, {}: every push (ms)", s.name);
        println!();
        println!("| push | ats-hook | in-place | archive \\| tar | ats-hook / in-place |");
        println!("| --- | --- | --- | --- | --- |");
        for i in 0..ours.len() {
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2}× |",
                s.warm + i + 2,
                ours[i].as_secs_f64() * 1000.0,
                inplace[i].as_secs_f64() * 1000.0,
                archive[i].as_secs_f64() * 1000.0,
                ratio(ours[i], inplace[i])
            );
        }
        println!();
        println!("| way | median | p95 | worst |");
        println!("| --- | --- | --- | --- |");
        for way in Way::ALL {
            let sum = summary(of(way));
            println!(
                "| {} | {} | {} | {} |",
                way.name(),
                ms(sum.median),
                ms(sum.p95),
                ms(sum.worst)
            );
        }
        let (o, i, a) = (summary(ours), summary(inplace), summary(archive));
        let median_ratio = ratio(o.median, i.median);
        let worst_ratio = ratio(o.worst, i.worst);
        let faster = ratio(a.median, o.median);
        println!();
        println!(
            "| median ≤ 1.1× in-place | {median_ratio:.2}× | {} |",
            verdict(median_ratio <= 1.1)
        );
        println!(
            "| worst push ≤ 1.5× in-place's worst | {worst_ratio:.2}× | {} |",
            verdict(worst_ratio <= 1.5)
        );
        println!(
            "| (ats-hook's worst against in-place's median: {:.2}×) | | |",
            ratio(o.worst, i.median)
        );
        all_met &= median_ratio <= 1.1 && worst_ratio <= 1.5;
        if against_archive {
            println!(
                "| ≥ 5× faster than `git archive \\| tar` (medians) | {faster:.1}× | {} |",
                verdict(faster >= 5.0)
            );
            all_met &= faster >= 5.0;
        } else {
            println!("| `git archive \\| tar` / ats-hook (medians) | {faster:.1}× | |");
        }
    }
    all_met
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--measure-rss") {
        measure_rss(&args[pos + 1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let under = args
        .iter()
        .position(|a| a == "--dir")
        .map(|pos| PathBuf::from(&args[pos + 1]))
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("ats-hook-bench-")
        .tempdir_in(&under)
        .unwrap();
    let base = tmp.path();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(base)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    println!("ats-hook push benchmark: whole `git push` wall times from the client, same machine ({cores} cores), one run, on {fs}");

    let app = base.join("app-work");
    std::fs::create_dir_all(&app).unwrap();
    let (files, bytes) = generate(&app, &mut Rng(0x00c0_ffee));
    git(&app, &["init", "-q", "-b", "main"]);
    git(&app, &["add", "-A"]);
    git(&app, &["commit", "-q", "-m", "initial"]);
    println!();
    println!(
        "## A web app's tree: {files} files, {:.1} MB (the shape of saleor's, generated)",
        bytes as f64 / 1e6
    );
    let app_met = args.iter().any(|a| a == "--wide-only")
        || tree(
            base,
            "web app",
            &app,
            &[
                "apps/app1/module1/views/file1.py",
                "apps/app2/module2/models/file2.py",
                "apps/app7/module3/templates/file4.py",
            ],
            quick,
            true,
        );

    let wide = base.join("wide-work");
    wide_tree(&wide);
    git(&wide, &["init", "-q", "-b", "main"]);
    git(&wide, &["add", "-A"]);
    git(&wide, &["commit", "-q", "-m", "initial"]);
    println!();
    println!("## 60,000 small files (600 folders of 100)");
    let wide_met = tree(
        base,
        "60,000 files",
        &wide,
        &["d0/sub0/f1.txt", "d5/sub599/f2.txt", "d3/sub300/f50.txt"],
        quick,
        false,
    );

    // The hook's peak memory on the 60,000 files: a small change from an old release, and a
    // whole checkout into a new deploy root (after the steady scenario, which leaves that server).
    let steady = base.join("60-000-files-steady-AtsHook.git");
    if steady.exists() {
        let small = peak_rss(&[BIN, "deploy", "--repo", steady.to_str().unwrap()], base);
        let fresh = base.join("fresh.toml");
        std::fs::write(
            &fresh,
            format!("[deploy]\nroot = \"{}\"\n", base.join("fresh").display()),
        )
        .unwrap();
        let whole = peak_rss(
            &[
                BIN,
                "deploy",
                "--repo",
                steady.to_str().unwrap(),
                "--config",
                fresh.to_str().unwrap(),
            ],
            base,
        );
        let peak = small.max(whole);
        println!();
        println!(
            "| peak memory of the hook on 60,000 files < 64 MiB | {:.1} MiB (whole checkout {:.1}, from an old release {:.1}) | {} |",
            peak as f64 / 1024.0,
            whole as f64 / 1024.0,
            small as f64 / 1024.0,
            verdict(peak < 64 * 1024)
        );
    }
    println!();
    println!(
        "all push targets: {}",
        if app_met && wide_met {
            "met"
        } else {
            "NOT all met"
        }
    );
}
