//! Hooks killed at any point: never a partial or unrecorded release live, and a step's
//! children die with the hook.

use crate::support::*;
use pretty_assertions::assert_eq;

#[test]
fn the_release_is_on_disk_before_current_switches_and_the_history_before_the_summary() {
    // A power loss cannot be staged here; the order of the system calls that guard against it
    // can be read with strace: the release's filesystem is synced (syncfs) before `current` is
    // renamed onto it, and the history's append is synced (fdatasync) before the summary line
    // is written for the pusher.
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"build\"\nrun = \"echo built > built.txt\"\n",
    );
    let trace = trace_hook(
        &server,
        "-e trace=syncfs,rename,renameat,renameat2,fdatasync,write",
    );
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
    server.hook_script(&format!(
        "#!/bin/sh\necho $$ > {}\nexec {BIN} post-receive\n",
        pidfile.display()
    ));

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

/// What the kernel holds unwritten, in MiB (`/proc/meminfo`).
fn unwritten_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    (field("Dirty:") + field("Writeback:")) / 1024
}

#[test]
fn a_release_built_from_an_old_one_waits_for_its_own_writes_not_for_other_processes() {
    // Another process has hundreds of MB unwritten (a database, a download): a `syncfs` before
    // the switch would wait for all of it. A release built from an old one, with no step run
    // in it, is made durable by its own files and folders instead, each `fsync`ed before the
    // switch; strace shows which (`-y` names each descriptor's file).
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    clone.write("lib/util.py", "x = 1\n");
    for n in 0..3 {
        clone.commit_file("app.py", &format!("{n}\n"));
        clone.push().success();
    }
    let _disk = crate::support::system::Mount::ext4_image(
        &server.path().join("busy.img"),
        &server.path().join("busy"),
        "600M",
    );
    let trace = trace_hook(
        &server,
        "-y -e trace=syncfs,fsync,rename,renameat,renameat2",
    );
    let backlog = vec![7u8; 1 << 20];
    let mut busy = std::fs::File::create(server.path().join("busy/data")).unwrap();
    for _ in 0..320 {
        std::io::Write::write_all(&mut busy, &backlog).unwrap();
    }
    drop(busy);
    let unwritten = unwritten_mib();
    assert!(
        unwritten >= 256,
        "the kernel wrote the backlog out at once ({unwritten} MiB left unwritten): the test needs it held"
    );
    clone.write("lib/new/mod.py", "y = 2\n");
    let commit = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &commit[..7]));
    let record = server.last_record();
    assert!(record["built_from"].is_string(), "{record}");
    assert_eq!(server.live_file("app.py"), "3\n");
    assert_eq!(server.live_file("lib/new/mod.py"), "y = 2\n");

    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let switch = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("/.current.") && l.contains("/current\""))
        .unwrap_or_else(|| panic!("no rename onto `current` in the trace:\n{text}"));
    let before = &lines[..switch];
    assert!(
        !before.iter().any(|l| l.contains("syncfs(")),
        "a syncfs before the switch, with other data unwritten:\n{text}"
    );
    let release = server
        .root
        .join("releases")
        .join(record["release"].as_str().unwrap());
    let fsynced = |path: &std::path::Path| {
        let named = format!("<{}>) = 0", path.display());
        before
            .iter()
            .any(|l| l.contains("fsync(") && l.ends_with(&named))
    };
    for path in [
        release.join("app.py"),
        release.join("lib/new/mod.py"),
        release.join("lib/new"),
        release.join("lib"),
        release.clone(),
        server.root.join("releases"),
    ] {
        assert!(
            fsynced(&path),
            "`{}` not fsynced before the switch:\n{text}",
            path.display()
        );
    }
    // Only what the push changed: an untouched file of the old release is not written again.
    assert!(!fsynced(&release.join("lib/util.py")), "{text}");
}

/// Makes the server's post-receive hook run ats-hook under `strace -f` with `options`; returns
/// where the trace goes.
fn trace_hook(server: &Server, options: &str) -> std::path::PathBuf {
    let trace = server.path().join("trace");
    server.hook_script(&format!(
        "#!/bin/sh\nexec strace -f -qq -s 300 -o {} {options} {BIN} post-receive\n",
        trace.display()
    ));
    trace
}
