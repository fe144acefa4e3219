//! Steps that fail, run too long, or are killed with the hook: the live release never changes.

use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::*;

fn config_with_step(run: &str, timeout: &str) -> String {
    format!(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"install\"\nrun = \"true\"\n[[step]]\nname = \"migrate\"\nrun = '''{run}'''\ntimeout = \"{timeout}\"\n"
    )
}

#[test]
fn a_failing_step_leaves_the_live_release_untouched() {
    let server = Server::new();
    server.config(&config_with_step(
        "test ! -e broken-migration || { echo 'relation \"x\" already exists' >&2; exit 3; }",
        "1m",
    ));
    let clone = server.clone("work");
    clone.write("app.py", "v1\n");
    let good = clone.commit("good");
    clone.push().success();
    let live = server.live().unwrap();

    clone.write("app.py", "v2\n").write("broken-migration", "");
    clone.commit("bad");
    let push = clone.push();
    push.success();
    push.stderr_has("migrate | relation \"x\" already exists");
    push.stderr_has("ats-hook: error: step `migrate` failed (exit 3)");
    assert_eq!(
        push.summary(),
        format!(
            "ats-hook: deploy FAILED at step migrate (exit 3); {} is still live",
            &good[..7]
        )
    );
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.live_file("app.py"), "v1\n");

    let record = server.last_record();
    assert_eq!(record["state"], "failed");
    assert_eq!(record["failed_step"], "migrate");
    assert_eq!(record["steps"][1]["status"], "failed");
    assert_eq!(record["steps"][1]["exit_code"], 3);

    // The hook's own exit status says so too.
    let old = &good;
    let new = clone.head();
    let stdin = format!("{old} {new} refs/heads/main\n");
    let run = server.hook_with_stdin(stdin.as_bytes());
    run.code(1)
        .stderr_has("deploy FAILED at step migrate (exit 3)");
}

#[test]
fn the_first_deploy_failing_says_nothing_is_live() {
    let server = Server::new();
    server.config(&config_with_step("exit 1", "1m"));
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    let push = clone.push();
    assert_eq!(
        push.summary(),
        "ats-hook: deploy FAILED at step migrate (exit 1); nothing is live yet"
    );
    assert_eq!(server.live(), None);
}

#[test]
fn a_step_past_its_timeout_is_killed_with_its_children() {
    let server = Server::new();
    server.config(&config_with_step(
        "sleep 300 & echo $! > \"$ATS_DEPLOY_ROOT/background.pid\"; echo started; sleep 300",
        "1s",
    ));
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    let started = std::time::Instant::now();
    let push = clone.push();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the push waited for the step"
    );
    push.success()
        .stderr_has("step `migrate` failed (timed out after 1s)");
    assert!(push
        .summary()
        .starts_with("ats-hook: deploy FAILED at step migrate (timed out after 1s)"));
    let pid = pid_in(&server.root.join("background.pid"));
    wait_for(
        "the background child to die",
        Duration::from_secs(10),
        || !alive(pid),
    );
    let record = server.last_record();
    assert_eq!(record["state"], "failed");
    assert_eq!(record["steps"][1]["status"], "timed-out");
    assert_eq!(server.live(), None);
}

#[test]
fn a_hook_killed_mid_step_leaves_no_stale_lock_nor_a_half_release_live() {
    let server = Server::new();
    server.config(&config_with_step(
        "if [ -e slow ]; then echo $PPID > \"$ATS_DEPLOY_ROOT/hook.pid\"; echo $$ > \"$ATS_DEPLOY_ROOT/step.pid\"; sleep 300; fi",
        "10m",
    ));
    let clone = server.clone("work");
    clone.write("a", "v1");
    let good = clone.commit("good");
    clone.push().success();
    let live = server.live().unwrap();

    clone.write("slow", "");
    let slow = clone.commit("slow");
    let (push, hook) = clone.spawn_push_until_pid(&server.root.join("hook.pid"));
    let step = pid_in(&server.root.join("step.pid"));
    // The hook and its watcher killed at once (the whole session SIGKILLed): nothing is left
    // to stop the step but the next run.
    for watcher in children_of(hook) {
        send_signal(watcher, nix::sys::signal::Signal::SIGKILL);
    }
    send_signal(hook, nix::sys::signal::Signal::SIGKILL);
    let output = push.wait_with_output().unwrap();
    assert!(output.status.success(), "post-receive cannot fail a push");
    // The step outlives them (its own process group), until the next run stops it.
    assert!(alive(step), "the step died with the hook");
    assert_eq!(
        server.live(),
        Some(live.clone()),
        "current moved after the hook was killed"
    );

    // The next push takes the lock at once, records the dead deploy, and deploys.
    std::fs::remove_file(clone.dir.join("slow")).unwrap();
    let next = clone.commit("next");
    let push = clone.push();
    push.success()
        .stderr_lacks("waiting for the deploy lock")
        .stderr_has(&format!(
            "stopped what the previous deploy left running (pid {step}"
        ))
        .stderr_has("did not finish (its process died); recording it as interrupted");
    wait_for(
        "the orphaned step to be gone",
        Duration::from_secs(5),
        || !alive(step),
    );
    assert!(push
        .summary()
        .starts_with(&format!("ats-hook: deployed {}", &next[..7])));
    let records = server.records();
    let states: Vec<&str> = records
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "interrupted", "succeeded"]);
    assert_eq!(records[1]["commit"], slow.as_str());
    assert_eq!(records[0]["commit"], good.as_str());
    assert_eq!(records[2]["previous_release"], live.as_str());
}

#[test]
fn sigterm_stops_the_step_and_records_the_deploy_as_interrupted() {
    let server = Server::new();
    server.config(&config_with_step(
        "sleep 300 & echo $! > \"$ATS_DEPLOY_ROOT/bg.pid\"; echo $PPID > \"$ATS_DEPLOY_ROOT/hook.pid\"; wait",
        "10m",
    ));
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    let (push, hook) = clone.spawn_push_until_pid(&server.root.join("hook.pid"));
    send_signal(hook, nix::sys::signal::Signal::SIGTERM);
    let output = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("deploy INTERRUPTED during step migrate; nothing is live yet"),
        "{stderr}"
    );
    let bg = pid_in(&server.root.join("bg.pid"));
    wait_for("the step's child to die", Duration::from_secs(10), || {
        !alive(bg)
    });
    let record = server.last_record();
    assert_eq!(record["state"], "interrupted");
    assert_eq!(record["steps"][1]["status"], "interrupted");
    assert_eq!(server.live(), None);
}
