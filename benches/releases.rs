//! How fast ats-hook makes a release, next to the usual ways, measured in one run.
//!
//! Run with `cargo bench --bench releases` (add `-- --quick` for a shorter run). It generates a
//! repository shaped like a large web app (about 5,000 files and 60 MB in nested folders, a few
//! large files), pushes a series of small changes through ats-hook as a real post-receive hook,
//! and times, on the same commits:
//!
//! - an in-place `git checkout -f` with a kept index (the hand-written post-receive script);
//! - a full checkout of the commit into a fresh folder (a naive release);
//! - `git archive | tar -x` into a fresh folder (Capistrano's way);
//! - ats-hook's release, as the hook itself records it (`checkout_ms` in deploys.jsonl);
//!
//! plus the cost of a push whose ref ats-hook does not deploy (against a repository with no
//! hook), the hook's peak memory, and what a reused install step costs. Then, on new servers:
//! the first seven pushes (with the default `keep_releases`, so the first ones build from the
//! spare release), and a tree of 60,000 small files in steady state, each against the in-place
//! hook and `git archive | tar`, in turns. It prints medians and ratios against the targets.
//! Everything happens under one temporary folder, removed at the end.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;
use support::*;

/// `git checkout -f SHA -- .` of the bare repository into `worktree`, with `index` as its
/// index: how a hand-written hook checks out.
fn git_checkout(bare: &Path, worktree: &Path, index: &Path, sha: &str) -> Duration {
    time(
        hermetic(Command::new("git"))
            .arg("--git-dir")
            .arg(bare)
            .arg("--work-tree")
            .arg(worktree)
            .args(["checkout", "-f", sha, "--", "."])
            .env("GIT_INDEX_FILE", index),
    )
}

/// `git archive | tar -x` of `sha` into a fresh `dir` (Capistrano's way), timed; `dir` goes
/// afterwards.
fn archive_into(bare: &Path, dir: &Path, sha: &str) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        "git --git-dir {} archive {sha} | tar -x -C {}",
        bare.display(),
        dir.display()
    );
    let took = time(hermetic(Command::new("sh")).arg("-c").arg(script));
    std::fs::remove_dir_all(dir).unwrap();
    took
}

/// Two small files changed and committed in `work`; returns the new commit.
fn touch_two(work: &Path, a: &str, b: &str, n: usize) -> String {
    for path in [a, b] {
        let mut text = std::fs::read(work.join(path)).unwrap();
        text.extend_from_slice(format!("\n# change {n}\n").as_bytes());
        std::fs::write(work.join(path), text).unwrap();
    }
    git(work, &["commit", "-q", "-am", &format!("change {n}")]);
    git(work, &["rev-parse", "HEAD"])
}

/// Waits until the spare prepared after the last push holds `commit` and its folders are
/// stamped, a couple of seconds later (pushes minutes apart give it that time), or the spare
/// is not wanted any more.
fn spare_settles(root: &Path, commit: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        let state = std::fs::read_to_string(root.join(".ats-hook/spare.json")).unwrap_or_default();
        let preparing = root.join("releases/.spare-new").exists();
        if (state.contains(commit) && root.join(".ats-hook/index/.spare.folders").exists())
            || (!preparing
                && !root.join("releases/.spare").exists()
                && start.elapsed() > Duration::from_secs(2))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ats-hook's release, the in-place checkout, and `git archive | tar` for one pushed commit.
struct Turn {
    ours: Duration,
    built_from: String,
    inplace: Duration,
    archive: Option<Duration>,
}

/// A new server for the tree in `work`: pushes the first commit, then `changes` of two files
/// each, waiting for the spare between pushes; times each against the other ways.
fn new_server(
    base: &Path,
    name: &str,
    work: &Path,
    files: (&str, &str),
    changes: usize,
    archive_samples: usize,
) -> Vec<Turn> {
    let bare = base.join(format!("{name}.git"));
    let root = base.join(name);
    hooked_repository(
        base,
        &bare,
        &format!("[deploy]\nroot = \"{}\"\n", root.display()),
    );
    git(work, &["remote", "add", name, bare.to_str().unwrap()]);
    let first = git(work, &["rev-parse", "HEAD"]);
    time(
        hermetic(Command::new("git"))
            .args(["push", "-q", name, "main"])
            .current_dir(work),
    );
    let inplace = base.join(format!("{name}-inplace"));
    std::fs::create_dir_all(&inplace).unwrap();
    let index = base.join(format!("{name}-inplace.index"));
    git_checkout(&bare, &inplace, &index, &first);
    let mut turns = Vec::new();
    let mut live = first;
    for n in 0..changes {
        spare_settles(&root, &live);
        let sha = touch_two(work, files.0, files.1, 1000 + n);
        time(
            hermetic(Command::new("git"))
                .args(["push", "-q", name, "main"])
                .current_dir(work),
        );
        let record = last_record(&root);
        assert_eq!(record["state"], "succeeded", "{record}");
        let ours = Duration::from_millis(record["checkout_ms"].as_u64().unwrap());
        let built_from = match record["built_from"].as_str() {
            Some("spare") => "the spare".to_string(),
            Some(_) => "an old release".to_string(),
            None => "a full checkout".to_string(),
        };
        let inplace = git_checkout(&bare, &inplace, &index, &sha);
        let archive = (n < archive_samples)
            .then(|| archive_into(&bare, &base.join(format!("{name}-archive")), &sha));
        turns.push(Turn {
            ours,
            built_from,
            inplace,
            archive,
        });
        live = sha;
    }
    turns
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// The first seven pushes on a new server, and a 60,000-file tree in steady state.
fn new_servers(base: &Path, quick: bool) {
    // The same app tree as above, in a work tree of its own.
    let work = base.join("week-work");
    std::fs::create_dir_all(&work).unwrap();
    let (files, _) = generate(&work, &mut Rng(0x00c0_ffee));
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "initial"]);
    eprintln!("the first seven pushes on a new server…");
    let week = new_server(
        base,
        "week",
        &work,
        (
            "apps/app1/module1/views/file1.py",
            "apps/app2/module2/models/file2.py",
        ),
        6,
        if quick { 2 } else { 6 },
    );
    println!();
    println!("The first seven pushes on a new server ({files} files, default `keep_releases = 5`), two files changed each:");
    println!();
    println!("| push | ats-hook | built from | in-place `git checkout -f` | ratio | `git archive \\| tar` |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (n, turn) in week.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {:.2}× | {} |",
            n + 2,
            ms(turn.ours),
            turn.built_from,
            ms(turn.inplace),
            ratio(turn.ours, turn.inplace),
            turn.archive.map(ms).unwrap_or_else(|| "–".into())
        );
    }
    let week_ratio = median(
        week.iter()
            .map(|t| Duration::from_secs_f64(ratio(t.ours, t.inplace)))
            .collect(),
    );
    println!();
    println!(
        "| pushes 2–7 ≤ 1.2× the in-place hook (median of ratios) | {:.2}× | {} |",
        week_ratio.as_secs_f64(),
        verdict(week_ratio.as_secs_f64() <= 1.2)
    );

    // 60,000 small files: 600 folders of 100.
    let wide = base.join("wide-work");
    wide_tree(&wide);
    git(&wide, &["init", "-q", "-b", "main"]);
    git(&wide, &["add", "-A"]);
    git(&wide, &["commit", "-q", "-m", "initial"]);
    let series = if quick { 12 } else { 20 };
    eprintln!("the 60,000-file tree: {series} pushes…");
    let turns = new_server(
        base,
        "wide",
        &wide,
        ("d0/sub0/f1.txt", "d5/sub599/f2.txt"),
        series,
        if quick { 2 } else { 4 },
    );
    // Steady state: the pushes built from old releases.
    let steady: Vec<&Turn> = turns
        .iter()
        .filter(|t| t.built_from == "an old release")
        .collect();
    let ours = median(steady.iter().map(|t| t.ours).collect());
    let inplace = median(steady.iter().map(|t| t.inplace).collect());
    let archive = median(turns.iter().filter_map(|t| t.archive).collect());
    let repo = base.join("wide.git");
    let rss = peak_rss(&[BIN, "deploy", "--repo", repo.to_str().unwrap()], base);
    println!();
    println!("60,000 small files (600 folders × 100), two files changed each push; medians of {} pushes built from old releases:", steady.len());
    println!();
    println!("| way | median |");
    println!("| --- | --- |");
    println!(
        "| in-place `git checkout -f` with a kept index | {} |",
        ms(inplace)
    );
    println!(
        "| `git archive \\| tar -x` into a fresh folder | {} |",
        ms(archive)
    );
    println!(
        "| ats-hook: new release for a small change | {} |",
        ms(ours)
    );
    println!();
    let r = ratio(ours, inplace);
    println!(
        "| 60,000 files, steady state ≤ 1.2× in-place | {r:.2}× | {} |",
        verdict(r <= 1.2)
    );
    println!(
        "| peak memory of the hook on 60,000 files ≤ 64 MiB | {:.1} MiB | {} |",
        rss as f64 / 1024.0,
        verdict(rss <= 64 * 1024)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--measure-rss") {
        measure_rss(&args[pos + 1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (series, slow_samples) = if quick { (5, 2) } else { (15, 5) };

    let tmp = tempfile::Builder::new()
        .prefix("ats-hook-bench-")
        .tempdir()
        .unwrap();
    let base = tmp.path();
    let work = base.join("work");
    let bare = base.join("app.git");
    let root = base.join("app");
    std::fs::create_dir_all(&work).unwrap();
    let mut rng = Rng(0x00c0_ffee);

    eprintln!("generating the repository…");
    let (files, bytes) = generate(&work, &mut rng);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "initial"]);
    hooked_repository(
        base,
        &bare,
        &format!(
            "[deploy]\nroot = \"{}\"\nkeep_releases = 5\n\
             [[step]]\nname = \"install\"\ninputs = [\"requirements.txt\"]\noutputs = [\"deps\"]\n\
             run = \"sleep 1 && mkdir deps\"\n",
            root.display()
        ),
    );
    git(&work, &["remote", "add", "staging", bare.to_str().unwrap()]);
    let first = git(&work, &["rev-parse", "HEAD"]);

    // The first push: a full checkout, as every first deploy is.
    time(
        hermetic(Command::new("git"))
            .args(["push", "-q", "staging", "main"])
            .current_dir(&work),
    );
    // ats-hook checking the tree out whole, timed in the same conditions as git below: by hand,
    // with reuse of old releases turned off. Neither side removes anything between samples (no
    // pruning, git's folders kept until the end): on a disk mounted with `discard`, a removal
    // costs the next sample, whichever side it is.
    let full_config = bare.join("full.toml");
    std::fs::write(
        &full_config,
        format!(
            "[deploy]\nroot = \"{}\"\nkeep_releases = 100\nrecycle_releases = false\n",
            root.display()
        ),
    )
    .unwrap();
    let repo_arg = bare.to_str().unwrap();
    let full_deploy = |sha: &str| {
        let config = full_config.to_str().unwrap();
        time(
            hermetic(Command::new(BIN))
                .args(["deploy", sha, "--repo", repo_arg, "--config", config]),
        );
        Duration::from_millis(last_record(&root)["checkout_ms"].as_u64().unwrap())
    };
    let full_checkout = |sha: &str, n: usize| {
        let dir = base.join(format!("fresh{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        git_checkout(&bare, &dir, &base.join(format!("fresh{n}.index")), sha)
    };
    // Taken in turns, so both see the same moods of the disk.
    let (mut first_git, mut first_deploy) = (Vec::new(), Vec::new());
    for n in 0..slow_samples {
        first_git.push(full_checkout(&first, n));
        first_deploy.push(full_deploy(&first));
    }
    let (first_git, first_deploy) = (median(first_git), median(first_deploy));
    for n in 0..slow_samples {
        std::fs::remove_dir_all(base.join(format!("fresh{n}"))).unwrap();
        std::fs::remove_file(base.join(format!("fresh{n}.index"))).unwrap();
    }

    // The in-place tree, as a hand-written hook keeps it.
    let inplace = base.join("inplace");
    std::fs::create_dir_all(&inplace).unwrap();
    let inplace_checkout =
        |sha: &str| git_checkout(&bare, &inplace, &base.join("inplace.index"), sha);
    inplace_checkout(&first);

    // A series of small changes: two files each.
    let change = |n: usize| -> String {
        for k in 0..2 {
            let path = work.join(format!(
                "apps/app{}/module{}/views/file{}.py",
                n % 12,
                (n + k) % 8,
                k
            ));
            let mut text = std::fs::read(&path).unwrap();
            text.extend_from_slice(format!("\n# change {n}\n").as_bytes());
            std::fs::write(path, text).unwrap();
        }
        git(&work, &["commit", "-q", "-am", &format!("change {n}")]);
        git(&work, &["rev-parse", "HEAD"])
    };
    eprintln!("pushing warm-up changes until old releases are reused…");
    for n in 0..5 {
        change(n);
        time(
            hermetic(Command::new("git"))
                .args(["push", "-q", "staging", "main"])
                .current_dir(&work),
        );
    }
    eprintln!("pushing {series} small changes…");
    let (mut ours, mut inplace_times, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    let mut synced = Vec::new();
    let mut commits = Vec::new();
    for n in 5..5 + series {
        let sha = change(n);
        time(
            hermetic(Command::new("git"))
                .args(["push", "-q", "staging", "main"])
                .current_dir(&work),
        );
        let record = last_record(&root);
        assert_eq!(record["state"], "succeeded", "{record}");
        assert!(
            record["built_from"].is_string(),
            "deploy {n} was not built from an old release: {record}"
        );
        ours.push(Duration::from_millis(
            record["checkout_ms"].as_u64().unwrap(),
        ));
        synced.push(Duration::from_millis(record["sync_ms"].as_u64().unwrap()));
        assert_eq!(record["steps"][0]["status"], "reused", "{record}");
        skipped.push(Duration::from_millis(
            record["steps"][0]["duration_ms"].as_u64().unwrap(),
        ));
        inplace_times.push(inplace_checkout(&sha));
        commits.push(sha);
    }
    let fresh: Vec<Duration> = commits
        .iter()
        .take(slow_samples)
        .enumerate()
        .map(|(n, sha)| {
            let took = full_checkout(sha, n);
            std::fs::remove_dir_all(base.join(format!("fresh{n}"))).unwrap();
            std::fs::remove_file(base.join(format!("fresh{n}.index"))).unwrap();
            took
        })
        .collect();
    let archive: Vec<Duration> = commits
        .iter()
        .take(slow_samples)
        .map(|sha| archive_into(&bare, &base.join("archive"), sha))
        .collect();

    // A push ats-hook does not deploy, against the same push to a repository with no hook.
    let plain = base.join("plain.git");
    git(
        base,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            plain.to_str().unwrap(),
        ],
    );
    git(&work, &["remote", "add", "plain", plain.to_str().unwrap()]);
    git(&work, &["push", "-q", "plain", "main"]);
    let (mut with_hook, mut without_hook) = (Vec::new(), Vec::new());
    // Cheap and noisy: more samples than the rest.
    for n in 0..31 {
        git(&work, &["checkout", "-q", "-B", &format!("feature{n}")]);
        std::fs::write(work.join("NOTES"), format!("{n}\n")).unwrap();
        git(&work, &["add", "NOTES"]);
        git(&work, &["commit", "-q", "-m", "notes"]);
        let branch = format!("feature{n}");
        with_hook.push(time(
            hermetic(Command::new("git"))
                .args(["push", "-q", "staging", &branch])
                .current_dir(&work),
        ));
        without_hook.push(time(
            hermetic(Command::new("git"))
                .args(["push", "-q", "plain", &branch])
                .current_dir(&work),
        ));
    }
    git(&work, &["checkout", "-q", "main"]);

    // Peak memory: a full checkout and a release built from an old one, by hand.
    let rss_incremental = peak_rss(&[BIN, "deploy", "--repo", repo_arg], base);
    let rss_full = peak_rss(
        &[
            BIN,
            "deploy",
            "--repo",
            repo_arg,
            "--config",
            full_config.to_str().unwrap(),
        ],
        base,
    );

    let ours_m = median(ours);
    let sync_m = median(synced);
    let inplace_m = median(inplace_times);
    let fresh_m = median(fresh);
    let archive_m = median(archive);
    let hook_m = median(with_hook.clone());
    let plain_m = median(without_hook.clone());
    let skip_m = median(skipped);

    println!();
    println!("ats-hook release benchmark: {files} files, {:.1} MB; medians of {series} small changes (2 files each),", bytes as f64 / 1e6);
    println!(
        "{slow_samples} samples for the slow ways; one run, one machine ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| way | median |");
    println!("| --- | --- |");
    println!(
        "| in-place `git checkout -f` with a kept index | {} |",
        ms(inplace_m)
    );
    println!("| full checkout into a fresh folder | {} |", ms(fresh_m));
    println!(
        "| `git archive \\| tar -x` into a fresh folder | {} |",
        ms(archive_m)
    );
    println!(
        "| ats-hook: new release for a small change | {} |",
        ms(ours_m)
    );
    println!(
        "| ats-hook: making it durable before the switch (syncfs) | {} |",
        ms(sync_m)
    );
    println!(
        "| ats-hook: first deploy (full checkout) | {} |",
        ms(first_deploy)
    );
    println!(
        "| git: first checkout into an empty folder | {} |",
        ms(first_git)
    );
    println!("| push of an ignored ref, ats-hook hook | {} |", ms(hook_m));
    println!("| push of the same ref, no hook | {} |", ms(plain_m));
    println!(
        "| reused install step (inputs unchanged) | {} |",
        ms(skip_m)
    );
    println!();
    println!("| target | measured | |");
    println!("| --- | --- | --- |");
    let r1 = ratio(ours_m, inplace_m);
    println!(
        "| small change (steady state) ≤ 1.1× in-place checkout | {r1:.2}× | {} |",
        verdict(r1 <= 1.1)
    );
    let r1s = ratio(ours_m + sync_m, inplace_m);
    println!(
        "| small change with its sync ≤ 1.2× in-place checkout (which syncs nothing) | {r1s:.2}× | {} |",
        verdict(r1s <= 1.2)
    );
    let r2 = ratio(fresh_m, ours_m);
    println!(
        "| small change ≥ 5× faster than a fresh checkout | {r2:.1}× faster | {} |",
        verdict(r2 >= 5.0)
    );
    let r3 = ratio(first_deploy, first_git);
    println!(
        "| first deploy ≤ 1.0× git checkout into an empty folder | {r3:.2}× | {} |",
        verdict(r3 <= 1.0)
    );
    let extra = hook_m.saturating_sub(plain_m);
    println!(
        "| ignored push ≤ 10 ms more than no hook | +{} | {} |",
        ms(extra),
        verdict(extra <= Duration::from_millis(10))
    );
    let peak = rss_incremental.max(rss_full);
    println!(
        "| peak memory ≤ 64 MiB | {:.1} MiB (full checkout {:.1}, from an old release {:.1}) | {} |",
        peak as f64 / 1024.0,
        rss_full as f64 / 1024.0,
        rss_incremental as f64 / 1024.0,
        verdict(peak <= 64 * 1024)
    );
    println!(
        "| reused install < 50 ms | {} | {} |",
        ms(skip_m),
        verdict(skip_m < Duration::from_millis(50))
    );
    println!(
        "| fresh checkout / archive vs ours | {:.1}× / {:.1}× | |",
        r2,
        ratio(archive_m, ours_m)
    );

    new_servers(base, quick);
}
