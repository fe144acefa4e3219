//! The spare release a new server's next push builds from: used when it is whole, never when its
//! preparation was killed, waited for while it is prepared (no longer than a whole checkout
//! would take), and a failure to prepare it shows in `status` while the live release stays
//! untouched.

use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::*;

/// A tree big enough that preparing its spare takes a while here.
fn many_files(clone: &Clone, n: usize) {
    for k in 0..n {
        clone.write(&format!("d{}/f{k}.txt", k % 40), &format!("file {k}\n"));
    }
}

/// The pid of the running preparer, from the spare lock, once `.spare-new` exists.
fn preparer(server: &Server) -> i32 {
    let mut pid = 0;
    wait_for("a spare being prepared", Duration::from_secs(20), || {
        pid = std::fs::read_to_string(server.root.join(".ats-hook/spare.lock"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        pid > 0 && alive(pid) && server.root.join("releases/.spare-new").exists()
    });
    pid
}

fn spare_ready(server: &Server, commit: &str) -> bool {
    std::fs::read_to_string(server.root.join(".ats-hook/spare.json"))
        .is_ok_and(|s| s.contains(commit))
        && server.root.join("releases/.spare").is_dir()
}

fn assert_live_is(server: &Server, clone: &Clone) {
    let head = clone.head();
    assert_eq!(server.last_record()["commit"], head.as_str());
    let live = server.root.join("current");
    for entry in ["app.py", "d0/f0.txt", "REVISION"] {
        assert_eq!(
            std::fs::read(live.join(entry)).ok(),
            if entry == "REVISION" {
                Some(format!("{head}\n").into_bytes())
            } else {
                std::fs::read(clone.dir.join(entry)).ok()
            },
            "{entry}"
        );
    }
}

#[test]
fn the_second_push_on_a_new_server_builds_from_the_spare() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n");
    let clone = server.clone("work");
    many_files(&clone, 200);
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success().stderr_has("checked out");
    wait_for("the spare", Duration::from_secs(20), || {
        spare_ready(&server, &v1)
    });
    server
        .ats(&["status"])
        .success()
        .stdout_has(&format!("spare:       ready, holding {}", &v1[..7]));
    // Once its folders' times can be trusted, the spare is stamped: the release itself and
    // its 40 folders, so the push that takes it lists only the folders that moved.
    let stamps = server.root.join(".ats-hook/index/.spare.folders");
    wait_for("the spare's stamps", Duration::from_secs(20), || {
        std::fs::read_to_string(&stamps).is_ok_and(|s| s.lines().count() == 41)
    });
    // Something written into the spare after that moves its folder's time, and goes.
    std::fs::write(server.root.join("releases/.spare/d3/stray.txt"), "x").unwrap();
    clone.commit_file("app.py", "2\n");
    clone
        .push()
        .success()
        .stderr_has("built from the spare release: 1 file written, 0 removed, 1 untracked removed");
    assert!(!server.root.join("current/d3/stray.txt").exists());
    assert_eq!(server.last_record()["built_from"], "spare");
    assert_live_is(&server, &clone);
    // The spare is a release no more; the next one follows the new live commit.
    let v2 = clone.head();
    wait_for("the next spare", Duration::from_secs(20), || {
        spare_ready(&server, &v2)
    });
    assert_eq!(server.releases().len(), 2);
}

/// A server whose first push of a tree of 3,000 files went live, and the pid of the preparer
/// of its spare, caught at work.
fn preparing() -> (Server, Clone, i32) {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n");
    let clone = server.clone("work");
    many_files(&clone, 3000);
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    let pid = preparer(&server);
    (server, clone, pid)
}

#[test]
fn a_preparer_killed_half_way_leaves_nothing_the_next_push_uses() {
    let (server, clone, pid) = preparing();
    send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_for("the preparer to die", Duration::from_secs(10), || {
        !alive(pid)
    });
    assert!(!server.root.join("releases/.spare").exists());

    clone.commit_file("app.py", "2\n");
    let push = clone.push();
    push.success().stderr_lacks("built from the spare");
    push.stderr_has("checked out");
    assert_live_is(&server, &clone);
    assert_eq!(server.records().len(), 2);
    assert!(server.records().iter().all(|r| r["state"] == "succeeded"));
    // The next preparation clears what the killed one left, and readies a whole spare.
    let v2 = clone.head();
    wait_for("a whole spare", Duration::from_secs(30), || {
        spare_ready(&server, &v2)
    });
    assert!(!server.root.join("releases/.spare-new").exists());
}

#[test]
fn a_push_during_the_preparation_waits_for_it_and_builds_from_the_spare() {
    let (server, clone, _pid) = preparing();

    clone.commit_file("app.py", "2\n");
    let push = clone.push();
    push.success()
        .stderr_lacks("waiting for the deploy lock")
        .stderr_has("waiting for the spare release being prepared")
        .stderr_has("built from the spare release: 1 file written");
    push.stderr_lacks("checked out");
    assert_live_is(&server, &clone);
    assert_eq!(server.last_record()["built_from"], "spare");
    let v2 = clone.head();
    wait_for("a spare of the new commit", Duration::from_secs(30), || {
        spare_ready(&server, &v2)
    });
}

#[test]
fn a_preparer_slower_than_a_checkout_is_not_waited_for_past_that() {
    let (server, clone, pid) = preparing();
    // Stopped in its tracks: it can never finish in time.
    send_signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let checkout_ms = server.last_record()["checkout_ms"].as_u64().unwrap();

    clone.commit_file("app.py", "2\n");
    let started = std::time::Instant::now();
    let push = clone.push();
    let took = started.elapsed();
    push.success()
        .stderr_has("waiting for the spare release being prepared")
        .stderr_has("the spare release is not ready: checking the tree out whole")
        .stderr_has("checked out");
    assert_live_is(&server, &clone);
    // The wait was bounded by what the first checkout cost, not by the stopped preparer.
    assert!(
        took < Duration::from_millis(checkout_ms * 3 / 2) + Duration::from_secs(20),
        "{took:?}"
    );
    // Asked to stop: the SIGTERM waits for it, pending, while it is stopped.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let pending = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(pending & (1 << (15 - 1)), 0, "no SIGTERM pending: {status}");
    // It stops once it runs again.
    send_signal(pid, nix::sys::signal::Signal::SIGCONT);
    wait_for("the preparer to stop", Duration::from_secs(30), || {
        !alive(pid)
    });
    let v2 = clone.head();
    wait_for("a spare of the new commit", Duration::from_secs(30), || {
        spare_ready(&server, &v2)
    });
}

#[test]
fn a_full_disk_while_preparing_leaves_the_live_release_and_shows_in_status() {
    let server = Server::new();
    let _disk = crate::support::system::Mount::tmpfs(&server.root, "5m");
    server.config("[deploy]\nroot = \"ROOT\"\n");
    let clone = server.clone("work");
    // Room for one copy of the tree, not two.
    clone.write("assets/big.bin", &"x".repeat(3_000_000));
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live().unwrap();
    wait_for("the preparation to fail", Duration::from_secs(20), || {
        std::fs::read_to_string(server.root.join(".ats-hook/spare.json"))
            .is_ok_and(|s| s.contains("failed"))
    });
    server
        .ats(&["status"])
        .success()
        .stdout_has("spare:       preparing it failed at ")
        .stdout_has("No space left on device")
        .stdout_has("a disk is full: free some space")
        .stdout_has("the next push checks its tree out whole");
    assert!(!server.root.join("releases/.spare-new").exists());
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.live_file("app.py"), "1\n");
    assert_eq!(server.last_record()["commit"], v1.as_str());

    // Space is freed (here, the disk grows): the next push deploys.
    let mut grow = std::process::Command::new("mount");
    grow.args(["-o", "remount,size=40m"]).arg(&server.root);
    run(&mut grow, "remount").success();
    clone.commit_file("app.py", "2\n");
    clone.push().success().stderr_has("ats-hook: deployed");
    assert_eq!(server.live_file("app.py"), "2\n");
    let v2 = clone.head();
    wait_for(
        "a spare once there is room",
        Duration::from_secs(20),
        || spare_ready(&server, &v2),
    );
    server
        .ats(&["status"])
        .success()
        .stdout_has(&format!("spare:       ready, holding {}", &v2[..7]));
}

/// A hook installed as a copy of the binary (`install --copy`) is named `post-receive`: the
/// preparer it starts is still told it runs as ats-hook, and the spare gets made.
#[test]
fn a_copied_hook_prepares_its_spare_too() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n");
    let hook = server.bare.join("hooks/post-receive");
    std::fs::remove_file(&hook).unwrap();
    std::fs::copy(BIN, &hook).unwrap();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    let head = clone.head();
    wait_for(
        "the spare of the first push",
        Duration::from_secs(20),
        || spare_ready(&server, &head),
    );
}
