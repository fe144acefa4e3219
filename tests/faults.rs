//! Faults and floods that must lose nothing: steps that print without end, one endless line,
//! a history cut mid-line. What a user checks: what the pusher read, what the log kept, the
//! hook's peak memory, the history.

use pretty_assertions::assert_eq;

use crate::support::*;

fn flood_config(run: &str) -> String {
    format!("[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"flood\"\nrun = '''{run}'''\n")
}

/// `git push staging main` under a parent that reports the peak memory of the largest process
/// below it (the hook): the push, and that peak in KiB.
fn push_measuring_memory(clone: &Clone) -> (Run, u64) {
    let mut cmd = command("python3", &clone.dir);
    cmd.current_dir(&clone.dir).args([
        "-c",
        "import resource, subprocess, sys\n\
         done = subprocess.run(sys.argv[1:])\n\
         print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
         sys.exit(done.returncode)",
        "git",
        "push",
        "staging",
        "main",
    ]);
    let push = run(&mut cmd, "git push staging main (peak memory measured)");
    let peak = push
        .stdout()
        .trim()
        .parse()
        .expect("the peak memory in KiB");
    (push, peak)
}

/// Whether the pusher read `line` (without the padding of step names and git's own).
fn pusher_read(push: &Run, line: &str) -> bool {
    push.remote_lines().iter().any(|l| l.trim_start() == line)
}

/// The log of the last deploy.
fn last_log(server: &Server) -> String {
    let id = server.last_record()["id"].as_str().unwrap().to_string();
    std::fs::read_to_string(server.root.join(".ats-hook/logs").join(format!("{id}.log"))).unwrap()
}

#[test]
fn a_flooding_step_keeps_its_error_for_the_pusher_and_the_log() {
    let server = Server::new();
    server.config(&flood_config(
        "seq 1 1000000; echo \"ERROR: the real cause of the failure\" >&2; exit 1",
    ));
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    let push = clone.push();
    let id = server.last_record()["id"].as_str().unwrap().to_string();
    push.success()
        .stderr_has(&format!(
            "ats-hook: … 997901 lines of `flood` not shown here; the whole output: `ats-hook log {id}`"
        ))
        .stderr_has("deploy FAILED at step flood (exit 1)");
    for (line, read) in [
        ("flood | 2000", true),
        ("flood | 2001", false),
        ("flood | 999900", false),
        ("flood | 999901", false),
        ("flood | 999902", true),
        ("flood | ERROR: the real cause of the failure", true),
    ] {
        assert_eq!(pusher_read(&push, line), read, "{line}");
    }
    // The pusher read about 2,100 lines of it; the log has every one, the error last.
    assert!(
        push.remote_lines().len() < 2200,
        "{}",
        push.remote_lines().len()
    );
    let log = last_log(&server);
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("flood | "))
        .collect();
    assert_eq!(lines.len(), 1_000_001);
    assert_eq!(lines[500_000], "flood | 500001");
    assert_eq!(
        lines[1_000_000],
        "flood | ERROR: the real cause of the failure"
    );
    server
        .ats(&["log", &id])
        .success()
        .stdout_has("flood | ERROR: the real cause of the failure");
}

#[test]
fn memory_stays_bounded_whatever_a_step_prints() {
    let server = Server::new();
    // 300 MB in lines of 100 bytes, more than the log keeps.
    server.config(&flood_config(
        "head -c 300000000 /dev/zero | tr '\\0' x | fold -w 99; echo; echo done",
    ));
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    let (push, peak_kib) = push_measuring_memory(&clone);
    assert!(pusher_read(&push, "flood | done"));
    push.success()
        .stderr_has("lines of `flood` not shown here")
        .stderr_has("of `flood` (")
        .stderr_has("not kept in the log: it keeps 50.0 MiB of output (`deploy.log_limit`)")
        .stderr_has("ats-hook: deployed ");
    println!(
        "floods: peak memory {} MiB while a step printed 300 MB",
        peak_kib / 1024
    );
    assert!(
        peak_kib <= 64 * 1024,
        "the hook peaked at {} MiB printing 300 MB",
        peak_kib / 1024
    );
    let log = last_log(&server);
    assert!(log.len() <= 51 << 20, "the log holds {} bytes", log.len());
    assert!(log.contains("not kept in the log"));

    // One 50 MB line without a newline: handed over in pieces, never buffered whole.
    server.config(&flood_config(
        "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo 'ERROR: after the long line' >&2; exit 1",
    ));
    clone.commit_file("app.py", "2\n");
    let (push, peak_kib) = push_measuring_memory(&clone);
    assert!(pusher_read(&push, "flood | ERROR: after the long line"));
    push.success()
        .stderr_has("deploy FAILED at step flood (exit 1)");
    println!(
        "floods: peak memory {} MiB on one 50 MB line",
        peak_kib / 1024
    );
    assert!(
        peak_kib <= 64 * 1024,
        "the hook peaked at {} MiB on one 50 MB line",
        peak_kib / 1024
    );
    assert!(
        push.stderr().len() < 1 << 20,
        "the pusher got {} bytes",
        push.stderr().len()
    );
}

#[test]
fn a_torn_last_line_of_the_history_loses_no_later_deploy() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    clone.commit_file("app.py", "2\n");
    clone.push().success();
    // A power loss during the last append: the record is cut mid-line.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let text = std::fs::read(&history).unwrap();
    let whole = text.iter().filter(|&&b| b == b'\n').count();
    std::fs::write(&history, &text[..text.len() - 40]).unwrap();

    let v3 = clone.commit_file("app.py", "3\n");
    let push = clone.push();
    push.success()
        .stderr_has(&format!(
            "skipped 1 damaged line that did not parse (line {whole})"
        ))
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The torn line stands alone; v3's records of its switch and of its end follow it.
    assert_eq!(lines.len(), whole + 2, "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(lines[whole - 1]).is_err());
    let last: serde_json::Value = serde_json::from_str(lines[whole + 1]).unwrap();
    assert_eq!(last["commit"], v3.as_str());
    assert_eq!(last["state"], "succeeded");

    // What people read: the live release is known, and the last deploy is the new one.
    let releases: serde_json::Value =
        serde_json::from_str(&server.ats(&["releases", "--json"]).stdout()).unwrap();
    let live = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["live"] == true)
        .unwrap();
    assert_eq!(live["state"], "succeeded");
    assert_eq!(live["commit"], v3.as_str());
    server
        .ats(&["status"])
        .success()
        .stdout_has(&format!(
            "last deploy: {} succeeded",
            last["id"].as_str().unwrap()
        ))
        .stderr_has("skipped 1 damaged line");
    // And the next deploy appends cleanly.
    clone.commit_file("app.py", "4\n");
    clone.push().success();
    let text = std::fs::read_to_string(&history).unwrap();
    assert_eq!(text.lines().count(), whole + 4);
    assert!(text.ends_with("}\n"));
}

#[test]
fn the_release_is_on_disk_before_current_switches_and_the_history_before_the_summary() {
    // A power loss cannot be staged here; the order of the system calls that guard against it
    // can be read with strace: the release's filesystem is synced (syncfs) before `current` is
    // renamed onto it, and the history's append is synced (fdatasync) before the summary line
    // is written for the pusher.
    use std::os::unix::fs::PermissionsExt;
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"build\"\nrun = \"echo built > built.txt\"\n",
    );
    let trace = server.path().join("trace");
    let hook = server.bare.join("hooks/post-receive");
    std::fs::remove_file(&hook).unwrap();
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nexec strace -f -qq -s 200 -o {} -e trace=syncfs,rename,renameat,renameat2,fdatasync,write {BIN} post-receive\n",
            trace.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let clone = server.clone("work");
    let commit = clone.commit_file("app.py", "1\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &commit[..7]));
    assert_eq!(server.live_file("built.txt"), "built\n");
    let text =
        std::fs::read_to_string(&trace).expect("strace wrote no trace (tests/run installs strace)");
    let lines: Vec<&str> = text.lines().collect();
    let first = |what: &str, found: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| found(l))
            .unwrap_or_else(|| panic!("no {what} in the trace:\n{text}"))
    };
    let switch = first("rename onto `current`", &|l| {
        l.contains("rename") && l.contains("/.current.") && l.contains("/current\"")
    });
    let release_sync = lines[..switch]
        .iter()
        .rposition(|l| l.contains("syncfs(") && l.ends_with("= 0"));
    assert!(
        release_sync.is_some(),
        "no syncfs before the switch:\n{text}"
    );
    let summary = first("summary line", &|l| {
        l.contains("write(2, \"ats-hook: deployed ")
    });
    let history_sync = lines[switch..summary]
        .iter()
        .any(|l| l.contains("fdatasync(") && l.ends_with("= 0"));
    assert!(
        history_sync,
        "no fdatasync between the switch and the summary:\n{text}"
    );
}

/// Whether `release`'s tracked files are exactly `commit`'s (what a fresh checkout would hold),
/// compared by git itself through a throwaway index.
fn release_equals_commit(server: &Server, release: &std::path::Path, commit: &str) -> bool {
    let index = server.path().join("compare.index");
    let _ = std::fs::remove_file(&index);
    let git = |args: &[&str]| {
        let mut cmd = command("git", server.path());
        cmd.arg("--git-dir")
            .arg(&server.bare)
            .arg("--work-tree")
            .arg(release)
            .args(args)
            .env("GIT_INDEX_FILE", &index);
        run(&mut cmd, format!("git {}", args.join(" ")))
    };
    git(&["read-tree", commit]).success();
    let _ = git(&["update-index", "-q", "--really-refresh"]);
    git(&["diff-files", "--quiet"]).output.status.success()
}

#[test]
fn sigkill_at_random_points_never_leaves_a_partial_or_unrecorded_release_live() {
    use crate::support::rng::Rng;
    use std::os::unix::fs::PermissionsExt;
    // 32 in every test run; `ATS_HOOK_KILL_TRIALS=100 tests/run faults::sigkill` for a campaign.
    let trials: usize = std::env::var("ATS_HOOK_KILL_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("SIGKILL trials: seed {seed}");
    let mut rng = Rng(seed);
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n\
         [[step]]\nname = \"build\"\nrun = \"sleep 0.1; echo built > built.txt\"\n\
         [restart]\ntouch = \"wsgi.py\"\ncommand = \"sleep 0.1\"\n\
         [health]\ncommand = \"test -e built.txt\"\n",
    );
    // The hook records its pid, then becomes ats-hook (exec keeps the pid).
    let pidfile = server.path().join("hook.pid");
    let hook = server.bare.join("hooks/post-receive");
    std::fs::remove_file(&hook).unwrap();
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec {BIN} post-receive\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A tree of 2,000 files in 40 folders.
    let clone = server.clone("work");
    for folder in 0..40 {
        for file in 0..50 {
            clone.write(
                &format!("app/module{folder}/file{file}.py"),
                &format!("# {folder}/{file}\n"),
            );
        }
    }
    clone.write("wsgi.py", "application = None\n");
    clone.commit("a large tree");
    clone.push().success();
    // How long a deploy takes, by how the release is made: checked out whole (every third
    // trial) or built from an old release. Kills land anywhere in that span, and a bit past.
    let config = |recycle: bool| {
        format!(
            "[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\nrecycle_releases = {recycle}\n\
             [[step]]\nname = \"build\"\nrun = \"sleep 0.1; echo built > built.txt\"\n\
             [restart]\ntouch = \"wsgi.py\"\ncommand = \"sleep 0.1\"\n\
             [health]\ncommand = \"test -e built.txt\"\n"
        )
    };
    let mut took = [std::time::Duration::ZERO; 2];
    for recycle in [false, true, true, true] {
        server.config(&config(recycle));
        clone.commit_file("wsgi.py", &format!("application = {recycle}\n"));
        clone.push().success();
        let hook_ms = server.last_record()["duration_ms"].as_u64().unwrap();
        took[recycle as usize] = std::time::Duration::from_millis(hook_ms);
    }

    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for trial in 0..trials {
        // A change of a few files, and now and then a folder added or removed.
        for _ in 0..3 {
            let (folder, file) = (rng.below(40), rng.below(50));
            clone.write(
                &format!("app/module{folder}/file{file}.py"),
                &format!("# trial {trial}\n"),
            );
        }
        if rng.below(4) == 0 {
            let folder = format!("app/extra{}", rng.below(3));
            if clone.dir.join(&folder).exists() {
                std::fs::remove_dir_all(clone.dir.join(&folder)).unwrap();
            } else {
                for file in 0..100 {
                    clone.write(&format!("{folder}/f{file}.txt"), &format!("{trial}\n"));
                }
            }
        }
        clone.commit(&format!("trial {trial}"));
        let recycle = trial % 3 != 0;
        server.config(&config(recycle));
        let _ = std::fs::remove_file(&pidfile);
        let push = clone.spawn_push(&["main"]);
        let hook_pid = pid_in(&pidfile);
        let delay = rng.below(took[recycle as usize].as_millis() as usize + 1);
        std::thread::sleep(std::time::Duration::from_millis(delay as u64));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(hook_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let killed = push.wait_with_output().unwrap();
        assert!(killed.status.success(), "a post-receive push never fails");

        // Right after the kill: `current`, if set, is a whole release the history knows.
        if let Some(live) = server.live() {
            let made = server
                .records()
                .into_iter()
                .rev()
                .find(|r| r["release"] == live.as_str())
                .unwrap_or_else(|| panic!("trial {trial}: {live} is live with no record"));
            let dir = server.root.join("releases").join(&live);
            assert!(
                release_equals_commit(&server, &dir, made["commit"].as_str().unwrap()),
                "trial {trial}: live release {live} is not whole"
            );
            // Killed after its switch: `status` says what the next run will do about it.
            if made["state"] == "switching" {
                server.ats(&["status"]).success().stdout_has(&format!(
                    "its deploy died after switching to it, before any check passed: the next push, `deploy` or `rollback` switches back to {}",
                    made["previous_release"].as_str().unwrap()
                ));
            }
        }

        // The next push takes the lock at once, puts right what the kill left, and deploys.
        clone.commit_file("wsgi.py", &format!("application = {trial}\n"));
        let next = clone.push();
        next.success().stderr_lacks("waiting for the deploy lock");
        assert!(
            next.summary().starts_with("ats-hook: deployed "),
            "trial {trial}: {}",
            next.stderr()
        );
        let records = server.records();
        let killed = &records[records.len() - 2];
        let outcome = match (killed["state"].as_str().unwrap(), killed["error"].as_str()) {
            ("succeeded", _) => "finished before the kill",
            (_, Some(error)) if error.contains("after the switch") => "killed after the switch",
            ("interrupted", _) => "killed before the switch",
            (other, _) => panic!("trial {trial}: the killed deploy is recorded as {other}"),
        };
        *outcomes.entry(outcome.to_string()).or_default() += 1;

        // What is live and the release a rollback would pick are recorded as succeeded, every
        // release so recorded is whole, and nothing half-removed is listed.
        let live = server.live().unwrap();
        let live_record = records.last().unwrap();
        assert_eq!(live_record["release"], live.as_str());
        assert_eq!(live_record["state"], "succeeded");
        let listed = server.ats(&["releases", "--json"]);
        let listed: serde_json::Value = serde_json::from_str(&listed.stdout()).unwrap();
        for release in listed.as_array().unwrap() {
            if release["rollback_target"] == true || release["live"] == true {
                assert_eq!(release["state"], "succeeded", "trial {trial}: {release}");
            }
            // Every release recorded as succeeded is whole, not only the two above.
            if release["state"] == "succeeded" {
                let dir = server
                    .root
                    .join("releases")
                    .join(release["id"].as_str().unwrap());
                assert!(
                    release_equals_commit(&server, &dir, release["commit"].as_str().unwrap()),
                    "trial {trial}: {release} is not whole"
                );
            }
        }
        assert!(
            server.releases().iter().all(|r| !r.starts_with('.')),
            "trial {trial}: {:?}",
            server.releases()
        );
        // Nothing the killed hook started is left running in the deploy root.
        let root = server.root.canonicalize().unwrap();
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| {
                std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&root))
            })
            .filter(|e| alive(e.file_name().to_string_lossy().parse().unwrap()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "trial {trial}: left running: {left:?}");
    }
    println!("SIGKILL trials: {trials} (seed {seed}): {outcomes:?}; every one recovered");
    // A rollback after all that picks a whole release.
    server.ats(&["rollback"]).success();
    let live = server.live().unwrap();
    let made = server
        .records()
        .into_iter()
        .rev()
        .find(|r| r["release"] == live.as_str() && r["action"] == "deploy")
        .unwrap();
    assert!(release_equals_commit(
        &server,
        &server.root.join("current"),
        made["commit"].as_str().unwrap()
    ));
}

/// A real, small filesystem (tmpfs with a size), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        crate::support::system::require_root();
        std::fs::create_dir_all(at).unwrap();
        let mut cmd = std::process::Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at);
        run(&mut cmd, "mount -t tmpfs").success();
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_during_a_step_or_the_checkout_leaves_the_live_release_and_says_why() {
    let server = Server::new();
    let _disk = SmallDisk::mount(&server.root, "6m");
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n\
         [[step]]\nname = \"build\"\nrun = \"test ! -e fill-disk || head -c 20000000 /dev/zero > filler\"\n",
    );
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live().unwrap();

    // A step that fills the disk: it fails, the pusher is told the disk is full, the history
    // can not even take the record.
    clone.write("fill-disk", "");
    clone.commit_file("app.py", "2\n");
    let push = clone.push();
    push.success()
        .stderr_has("No space left on device")
        .stderr_has("is full (")
        .stderr_has("free some space (`df -h` shows where), then push again");
    assert_eq!(server.live(), Some(live.clone()));
    assert_eq!(server.live_file("app.py"), "1\n");
    let status = server.ats(&["status"]);
    status
        .success()
        .stdout_has(&format!("live:        {live} ({} of main)", &v1[..7]));

    // Space freed (the failed release's filler goes), the next push deploys.
    let failed = server.releases().into_iter().find(|r| *r != live).unwrap();
    std::fs::remove_file(server.root.join("releases").join(&failed).join("filler")).unwrap();
    std::fs::remove_file(clone.dir.join("fill-disk")).unwrap();
    let v3 = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    let live = server.live().unwrap();

    // A commit too large for the disk: the checkout fails, saying why; the live release stays.
    let big: String = "x".repeat(8_000_000);
    clone.commit_file("assets/big.bin", &big);
    let push = clone.push();
    push.success()
        .stderr_has("No space left on device")
        .stderr_has("a disk is full: free some space (`df -h` shows where), then push again")
        .stderr_has(&format!("deploy FAILED; {} is still live", &v3[..7]));
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.live_file("app.py"), "3\n");

    // Without it, the next push deploys, and the history reads whole.
    clone.git(&["rm", "-q", "assets/big.bin"]).success();
    let v5 = clone.commit("the asset goes to a CDN");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v5[..7]));
    let log = server.ats(&["log", "--json"]);
    log.success();
    let history: serde_json::Value = serde_json::from_str(&log.stdout()).unwrap();
    let states: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"succeeded"));
    assert_eq!(states.last(), Some(&"succeeded"));
    assert!(states.contains(&"failed"), "{states:?}");
}

#[test]
fn damaged_state_is_named_with_a_way_out_and_a_redeploy_repairs_it() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    clone.commit_file("app.py", "2\n");
    clone.push().success();

    // The live release's folder deleted: `status` says so and how to mend it; a push does.
    let live = server.live().unwrap();
    std::fs::remove_dir_all(server.root.join("releases").join(&live)).unwrap();
    server
        .ats(&["status"])
        .success()
        .stdout_has("its folder is gone: push again or run `ats-hook deploy` to replace it");
    let v3 = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has(&format!(
            "`current` points at release {live}, whose folder is gone"
        ))
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    assert_eq!(server.live_file("app.py"), "3\n");

    // `current` pointing at nothing at all: the same.
    std::fs::remove_file(server.root.join("current")).unwrap();
    std::os::unix::fs::symlink("releases/nothing", server.root.join("current")).unwrap();
    let v4 = clone.commit_file("app.py", "4\n");
    clone
        .push()
        .success()
        .stderr_has("`current` points at release nothing, whose folder is gone")
        .stderr_has(&format!("ats-hook: deployed {}", &v4[..7]));

    // The lock path is a folder: named, with the way out; nothing changes.
    let lock = server.root.join(".ats-hook/lock");
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&lock).unwrap();
    let live = server.live();
    clone.commit_file("app.py", "5\n");
    clone.push().success().stderr_has(&format!(
        "the lock file `{}` is a folder: remove it (`rmdir {}`)",
        lock.display(),
        lock.display()
    ));
    assert_eq!(server.live(), live);
    std::fs::remove_dir(&lock).unwrap();
    let v6 = clone.commit_file("app.py", "6\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v6[..7]));

    // Every kept index lost: releases are checked out whole again, as whole as before.
    for entry in std::fs::read_dir(server.root.join(".ats-hook/index")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for n in 7..10 {
        clone.commit_file("app.py", &format!("{n}\n"));
        let push = clone.push();
        push.success().stderr_lacks("built from old release");
        assert_eq!(server.live_file("app.py"), format!("{n}\n"));
    }
    clone.commit_file("app.py", "10\n");
    clone.push().success().stderr_has("built from old release");
    assert_eq!(server.live_file("app.py"), "10\n");
}

#[test]
fn a_full_disk_at_the_history_append_is_said_and_the_next_push_records_what_happened() {
    let server = Server::new();
    let _disk = SmallDisk::mount(&server.root, "4m");
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n\
         [[step]]\nname = \"build\"\nrun = \"test ! -e fill-disk || head -c 20000000 /dev/zero > \\\"$ATS_DEPLOY_ROOT/filler\\\" || true\"\n",
    );
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live().unwrap();
    // Blank lines, which readers skip, bring the history to a page boundary: its next record
    // needs a new page of the full disk, as a record on a real server eventually does.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let len = std::fs::metadata(&history).unwrap().len() as usize;
    let mut padded = std::fs::read(&history).unwrap();
    padded.resize(len.div_ceil(4096) * 4096, b'\n');
    std::fs::write(&history, padded).unwrap();

    // The step fills the disk and succeeds; the deploy goes on, but its record cannot be
    // written: the pusher is told, and the switch it announced was never made.
    clone.write("fill-disk", "");
    clone.commit_file("app.py", "2\n");
    let push = clone.push();
    push.success()
        .stderr_has("a disk is full: free some space (`df -h` shows where), then push again")
        .stderr_has("the history could not record this deploy, so the next run will")
        .stderr_has("failed to append to history");
    // The pusher still reads how it ended, and the first cause.
    assert_eq!(
        push.summary(),
        format!("ats-hook: deploy FAILED; {} is still live", &v1[..7])
    );
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.live_file("app.py"), "1\n");
    server
        .ats(&["status"])
        .success()
        .stdout_has(&format!("({} of main)", &v1[..7]));

    // Space freed: the next push records the one that could not, and deploys.
    std::fs::remove_file(server.root.join("filler")).unwrap();
    std::fs::remove_file(clone.dir.join("fill-disk")).unwrap();
    let v3 = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has("ended (failed) but the history could not record it then; recording it now")
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    let log = server.ats(&["log", "--json"]);
    let history: serde_json::Value = serde_json::from_str(&log.success().stdout()).unwrap();
    let states: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    // The record says what happened, not that the process died.
    assert_eq!(states, ["succeeded", "failed", "succeeded"]);
    assert!(history[1]["error"]
        .as_str()
        .unwrap()
        .contains("failed to append to history"));
}

#[test]
fn damaged_bytes_in_the_history_or_the_lock_file_stop_no_command() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    // Bytes that are not UTF-8, and a record whose commit is not a sha at all.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let mut text = std::fs::read(&history).unwrap();
    text.extend_from_slice(b"\xff\xfe not a record\n");
    let last = server.last_record();
    let mut odd = last.clone();
    odd["id"] = "20261122T000000Z-odd".into();
    odd["release"] = "20261122T000000Z-odd".into();
    odd["commit"] = "🙂🙂🙂🙂🙂🙂🙂🙂".into();
    text.extend_from_slice(format!("{odd}\n").as_bytes());
    std::fs::write(&history, text).unwrap();
    for args in [
        &["status"][..],
        &["log"],
        &["releases"],
        &["status", "--json"],
    ] {
        server
            .ats(args)
            .success()
            .stderr_has("skipped 1 damaged line that did not parse");
    }
    server.ats(&["log"]).success().stdout_has("🙂🙂🙂🙂🙂🙂🙂");

    // A lock file left by a dead holder whose commit is not a sha either.
    std::fs::write(
        server.root.join(".ats-hook/lock"),
        r#"{"pid":999999,"commit":"🙂🙂🙂🙂🙂🙂🙂🙂","git_ref":"refs/heads/main","release":"","since":"2026-11-22T00:00:00Z","pusher":"someone"}"#,
    )
    .unwrap();
    let v2 = clone.commit_file("app.py", "2\n");
    clone
        .push()
        .success()
        .stderr_has("(deploying 🙂🙂🙂🙂🙂🙂🙂 of `refs/heads/main`")
        .stderr_has(&format!("ats-hook: deployed {}", &v2[..7]));
}

#[test]
fn sigterm_while_waiting_for_the_lock_stops_at_once() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"build\"\n\
         run = \"touch \\\"$ATS_DEPLOY_ROOT/started\\\"; while [ ! -e \\\"$ATS_DEPLOY_ROOT/go\\\" ]; do sleep 0.05; done\"\n",
    );
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    let first = clone.spawn_push(&["main"]);
    wait_for(
        "the first deploy's step",
        std::time::Duration::from_secs(30),
        || server.root.join("started").exists(),
    );
    // A deploy by hand waits for the lock; SIGTERM ends the wait, with nothing deployed.
    let mut waiting = command(BIN, server.path())
        .args(["deploy", "--repo"])
        .arg(&server.bare)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let asked = std::time::Instant::now();
    send_signal(waiting.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let status = waiting.wait().unwrap();
    let stopped_in = asked.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(waiting.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stopped_in < std::time::Duration::from_secs(2),
        "{stopped_in:?}"
    );
    assert!(
        stderr.contains("waiting for the deploy lock held by"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopped while waiting for the deploy lock; nothing was deployed"),
        "{stderr}"
    );
    std::fs::write(server.root.join("go"), "").unwrap();
    assert!(first.wait_with_output().unwrap().status.success());
    assert_eq!(server.records().len(), 1, "the stopped wait is no deploy");
}

#[test]
fn sigterm_during_the_restart_switches_back_and_restarts_the_old_release_to_the_end() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[restart]\n\
         command = \"if [ -e current/slow-restart ]; then echo $PPID > \\\"$ATS_DEPLOY_ROOT/hook.pid\\\"; sleep 30; fi; sleep 0.5; echo \\\"$ATS_RELEASE_ID\\\" >> \\\"$ATS_DEPLOY_ROOT/restarted\\\"\"\n",
    );
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let old = server.live().unwrap();
    clone.write("slow-restart", "");
    clone.commit_file("app.py", "2\n");
    let (push, hook) = clone.spawn_push_until_pid(&server.root.join("hook.pid"));
    send_signal(hook, nix::sys::signal::Signal::SIGTERM);
    let output = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "deploy INTERRUPTED during restart; switched back, {} is live again",
            &v1[..7]
        )),
        "{stderr}"
    );
    assert_eq!(server.live(), Some(old.clone()));
    // The old release's restart ran to its end, after the stop.
    let restarted = std::fs::read_to_string(server.root.join("restarted")).unwrap();
    assert_eq!(restarted.lines().last(), Some(old.as_str()), "{restarted}");
    assert_eq!(server.last_record()["state"], "interrupted");
}

#[test]
fn gate_mode_a_hook_killed_after_its_switch_is_undone_and_the_branch_equals_what_is_live() {
    let server = Server::new();
    server.gate().config(
        "[deploy]\nroot = \"ROOT\"\n[restart]\n\
         command = \"if [ -e current/slow-restart ]; then echo $PPID > \\\"$ATS_DEPLOY_ROOT/hook.pid\\\"; sleep 30; fi\"\n",
    );
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let first = server.live().unwrap();
    clone.write("slow-restart", "");
    clone.commit_file("app.py", "2\n");
    let (push, hook) = clone.spawn_push_until_pid(&server.root.join("hook.pid"));
    send_signal(hook, nix::sys::signal::Signal::SIGKILL);
    let output = push.wait_with_output().unwrap();
    assert!(!output.status.success(), "gate mode rejects the push");
    // Killed after its switch: the branch did not move, `current` did; status says so.
    assert_eq!(server.tip("refs/heads/main").as_deref(), Some(v1.as_str()));
    let switched = server.live().unwrap();
    assert_ne!(switched, first);
    server.ats(&["status"]).success().stdout_has(&format!(
        "its deploy died after switching to it, before any check passed: the next push, `deploy` or `rollback` switches back to {first}"
    ));

    // The next push undoes the switch first, then deploys; branch and live agree again.
    std::fs::remove_file(clone.dir.join("slow-restart")).unwrap();
    let v3 = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has(&format!(
            "died after switching `current` to {switched}; switching back to {first}"
        ))
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    assert_eq!(server.tip("refs/heads/main").as_deref(), Some(v3.as_str()));
    assert_eq!(server.live_file("app.py"), "3\n");
    let records = server.records();
    let killed = records
        .iter()
        .find(|r| r["release"] == switched.as_str())
        .unwrap();
    assert_eq!(killed["state"], "interrupted");
    assert!(killed["error"]
        .as_str()
        .unwrap()
        .contains(&format!("switched `current` back to {first}")));
}

#[test]
fn sigterm_during_the_health_check_switches_back_and_is_recorded_as_interrupted() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[health]\n\
         command = \"if [ -e slow-health ]; then echo $PPID > \\\"$ATS_DEPLOY_ROOT/hook.pid\\\"; sleep 30; fi\"\ntimeout = \"2m\"\n",
    );
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let old = server.live().unwrap();
    clone.write("slow-health", "");
    clone.commit_file("app.py", "2\n");
    let (push, hook) = clone.spawn_push_until_pid(&server.root.join("hook.pid"));
    send_signal(hook, nix::sys::signal::Signal::SIGTERM);
    let output = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "deploy INTERRUPTED during health check; switched back, {} is live again",
            &v1[..7]
        )),
        "{stderr}"
    );
    assert_eq!(server.live(), Some(old));
    assert_eq!(server.last_record()["state"], "interrupted");
}

/// An error after the lock is taken and before anything ran (a history that cannot be read, an
/// env file gone before a rollback) leaves the lock file empty: no later run records a deploy
/// that never ran as one that died.
#[test]
fn an_error_before_anything_ran_leaves_no_phantom_interrupted_deploy() {
    let server = Server::new();
    std::fs::create_dir_all(server.root.join("shared")).unwrap();
    std::fs::write(server.root.join("shared/.env"), "A=1\n").unwrap();
    server.config("[deploy]\nroot = \"ROOT\"\n[env]\nfile = \"shared/.env\"\n");
    let clone = server.clone("work");
    clone.commit_file("a", "1");
    clone.push().success();
    clone.commit_file("a", "2");
    clone.push().success();
    let lock = server.root.join(".ats-hook/lock");

    // The history cannot be read: the push says why, and the lock is left empty.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let kept = server.root.join("history-aside");
    std::fs::rename(&history, &kept).unwrap();
    std::fs::create_dir(&history).unwrap();
    clone.commit_file("a", "3");
    clone
        .push()
        .success()
        .stderr_has(&format!("failed to read history `{}`", history.display()));
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "");
    std::fs::remove_dir(&history).unwrap();
    std::fs::rename(&kept, &history).unwrap();

    // A rollback whose environment cannot be made: refused, unrecorded, the lock empty.
    std::fs::remove_file(server.root.join("shared/.env")).unwrap();
    server
        .ats(&["rollback"])
        .failure()
        .stderr_has("failed to read env file");
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "");
    std::fs::write(server.root.join("shared/.env"), "A=1\n").unwrap();

    let v4 = clone.commit_file("a", "4");
    clone.push().success().stderr_lacks("died");
    let states: Vec<String> = server
        .records()
        .iter()
        .map(|r| format!("{} {}", r["action"], r["state"]))
        .collect();
    assert_eq!(
        states,
        vec![
            "\"deploy\" \"succeeded\"",
            "\"deploy\" \"succeeded\"",
            "\"deploy\" \"succeeded\""
        ]
    );
    assert_eq!(server.last_record()["commit"], v4.as_str());
}

/// A step of a hook that is SIGKILLed stops with it, its background children too: nothing of
/// the dead deploy runs on to its end.
#[test]
fn a_killed_hooks_step_and_its_children_die_with_it() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"slow\"\ntimeout = \"10m\"\n\
         run = \"sleep 300 & echo $! > \\\"$ATS_DEPLOY_ROOT/child.pid\\\"; echo $$ > \\\"$ATS_DEPLOY_ROOT/step.pid\\\"; echo $PPID > \\\"$ATS_DEPLOY_ROOT/hook.pid\\\"; wait; touch \\\"$ATS_DEPLOY_ROOT/finished\\\"\"\n",
    );
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    let (push, hook) = clone.spawn_push_until_pid(&server.root.join("hook.pid"));
    let step = pid_in(&server.root.join("step.pid"));
    let child = pid_in(&server.root.join("child.pid"));
    assert!(alive(step) && alive(child));
    send_signal(hook, nix::sys::signal::Signal::SIGKILL);
    let _ = push.wait_with_output().unwrap();
    wait_for(
        "the step and its child to stop",
        std::time::Duration::from_secs(10),
        || !alive(step) && !alive(child),
    );
    assert!(!server.root.join("finished").exists());

    // The next push deploys as usual.
    clone.commit_file("app.py", "2\n");
    server.config("[deploy]\nroot = \"ROOT\"\n");
    clone.push().success().stderr_has("ats-hook: deployed");
    assert_eq!(server.live_file("app.py"), "2\n");
}
