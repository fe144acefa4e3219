//! SIGTERM while waiting for the lock, during the restart or the health check, a gate hook
//! killed after its switch, an error before anything ran: each recorded as what it was.

use crate::support::*;
use pretty_assertions::assert_eq;

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
