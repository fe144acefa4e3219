//! Two pushes at once: the second waits for the lock, says who holds it, then deploys.

use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::*;

const SLOW_STEP: &str = r#"
[deploy]
root = "ROOT"
lock_timeout = "LOCK_TIMEOUT"
[[step]]
name = "build"
run = "if [ -e slow ]; then touch \"$ATS_DEPLOY_ROOT/first-started\"; while [ ! -e \"$ATS_DEPLOY_ROOT/go\" ]; do sleep 0.05; done; fi"
timeout = "2m"
"#;

/// Commits a slow first and a quick second commit, and starts pushing the first; returns once
/// its step runs (holding the lock until `go` exists in the deploy root).
fn start_slow_deploy(server: &Server) -> (Clone, String, String, std::process::Child) {
    let clone = server.clone("work");
    clone.write("slow", "");
    let first = clone.commit("first");
    std::fs::remove_file(clone.dir.join("slow")).unwrap();
    let second = clone.commit("second");
    let push_first = clone.spawn_push(&[&format!("{first}:refs/heads/main")]);
    wait_for("the first deploy's step", Duration::from_secs(30), || {
        server.root.join("first-started").exists()
    });
    (clone, first, second, push_first)
}

#[test]
fn a_second_push_waits_for_the_first_and_deploys_after_it() {
    let server = Server::new();
    server.config(&SLOW_STEP.replace("LOCK_TIMEOUT", "2m"));
    let (clone, first, second, push_first) = start_slow_deploy(&server);
    let push_second = clone.spawn_push(&[&format!("{second}:refs/heads/main")]);
    // The second hook is waiting: let it say so, then let the first finish.
    let lock = server.root.join(".ats-hook/lock");
    wait_for(
        "the first deploy to hold the lock",
        Duration::from_secs(10),
        || std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&first)),
    );
    // `status` shows who holds the lock meanwhile.
    server
        .ats(&["status"])
        .success()
        .stdout_has("lock:        held by pid ")
        .stdout_has(&format!("(deploying {} of `refs/heads/main`", &first[..7]));
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(server.root.join("go"), "").unwrap();

    let first_out = push_first.wait_with_output().unwrap();
    let second_out = push_second.wait_with_output().unwrap();
    assert!(first_out.status.success() && second_out.status.success());
    let second_err = String::from_utf8_lossy(&second_out.stderr);
    assert!(
        second_err.contains("waiting for the deploy lock held by pid"),
        "{second_err}"
    );
    assert!(
        second_err.contains(&format!(
            "(deploying {} of `refs/heads/main` for tester",
            &first[..7]
        )),
        "{second_err}"
    );
    assert!(
        second_err.contains(&format!("ats-hook: deployed {}", &second[..7])),
        "{second_err}"
    );

    let records = server.records();
    let commits: Vec<&str> = records
        .iter()
        .map(|r| r["commit"].as_str().unwrap())
        .collect();
    assert_eq!(commits, [first.as_str(), second.as_str()]);
    assert!(records.iter().all(|r| r["state"] == "succeeded"));
    assert_eq!(
        server.live().unwrap(),
        records[1]["release"].as_str().unwrap()
    );
    assert_eq!(records[1]["previous_release"], records[0]["release"]);
}

#[test]
fn a_push_gives_up_after_the_lock_timeout() {
    let server = Server::new();
    server.config(&SLOW_STEP.replace("LOCK_TIMEOUT", "1s"));
    let (clone, first, second, push_first) = start_slow_deploy(&server);
    let push = clone.push_args(&[&format!("{second}:refs/heads/main")]);
    push.success()
        .stderr_has("ats-hook: error: gave up after 1s waiting for the deploy lock held by pid");
    std::fs::write(server.root.join("go"), "").unwrap();
    assert!(push_first.wait_with_output().unwrap().status.success());
    let records = server.records();
    assert_eq!(
        records.len(),
        1,
        "the push that gave up must not be recorded as a deploy"
    );
    assert_eq!(records[0]["commit"], first.as_str());
}

const COUNTED: &str = r#"
[deploy]
root = "ROOT"
lock_timeout = "2m"
QUEUE
[[step]]
name = "build"
run = 'if [ -e "$ATS_DEPLOY_ROOT/hold" ]; then touch "$ATS_DEPLOY_ROOT/holding"; while [ -e "$ATS_DEPLOY_ROOT/hold" ]; do sleep 0.05; done; fi; echo "$ATS_COMMIT" >> "$ATS_DEPLOY_ROOT/ran"'
timeout = "2m"
"#;

/// Five pushes of one branch that arrive while a deploy holds the lock: which ones run their
/// steps, and what the pushers read. Returns the five commits and each push's output.
fn five_waiting_pushes(server: &Server) -> (Vec<String>, Vec<std::process::Output>) {
    let clone = server.clone("work");
    clone.commit_file("a", "0");
    clone.push().success();
    // A deploy by hand holds the lock in its step until `hold` goes.
    std::fs::write(server.root.join("hold"), "").unwrap();
    let holder = ChildGuard(
        command(BIN, server.path())
            .args(["deploy", "--repo"])
            .arg(&server.bare)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "the deploy holding the lock",
        Duration::from_secs(30),
        || server.root.join("holding").exists(),
    );
    let queue = server.root.join(".ats-hook/queue");
    let mut commits = Vec::new();
    let mut pushes = Vec::new();
    for n in 1..=5 {
        let sha = clone.commit_file("a", &n.to_string());
        // By URL, so that no push of the clone updates a remote-tracking ref another holds.
        let push = command("git", server.path())
            .args(["push", server.bare.to_str().unwrap()])
            .arg(format!("{sha}:refs/heads/main"))
            .current_dir(&clone.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // In order: each has announced itself before the next starts.
        wait_for(
            "the push to wait for the lock",
            Duration::from_secs(30),
            || {
                std::fs::read_dir(&queue).is_ok_and(|entries| {
                    entries.flatten().any(|e| {
                        std::fs::read_to_string(e.path()).is_ok_and(|text| text.contains(&sha))
                    })
                })
            },
        );
        commits.push(sha);
        pushes.push(push);
    }
    std::fs::remove_file(server.root.join("hold")).unwrap();
    let outputs = pushes
        .into_iter()
        .map(|push| push.wait_with_output().unwrap())
        .collect();
    drop(holder);
    (commits, outputs)
}

fn assert_only_the_newest_deployed(
    server: &Server,
    commits: &[String],
    outputs: &[std::process::Output],
) {
    let newest = &commits[4];
    // Steps ran for the first push, the deploy by hand, and the newest push only.
    let ran = std::fs::read_to_string(server.root.join("ran")).unwrap();
    let ran: Vec<&str> = ran.lines().collect();
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert_eq!(ran[2], newest.as_str());
    let records = server.records();
    let superseded: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["state"] == "superseded")
        .collect();
    assert_eq!(superseded.len(), 4, "{records:#?}");
    for record in &superseded {
        assert_eq!(record["error"], format!("superseded by {}", &newest[..7]));
        assert!(commits[..4].contains(&record["commit"].as_str().unwrap().to_string()));
    }
    // The newest push's deploy succeeded, whichever order the waiters got the lock in.
    assert!(
        records
            .iter()
            .any(|r| r["commit"] == newest.as_str() && r["state"] == "succeeded"),
        "{records:#?}"
    );
    assert_eq!(server.live_file("a"), "5");
    for (sha, output) in commits[..4].iter().zip(outputs) {
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            err.contains(&format!("ats-hook: superseded by {}, which ", &newest[..7])),
            "{sha}: {err}"
        );
    }
    let newest_err = String::from_utf8_lossy(&outputs[4].stderr);
    assert!(
        newest_err.contains(&format!("ats-hook: deployed {}", &newest[..7])),
        "{newest_err}"
    );
}

#[test]
fn of_five_pushes_waiting_for_the_lock_only_the_newest_deploys() {
    let server = Server::new();
    server.config(&COUNTED.replace("QUEUE", ""));
    let (commits, outputs) = five_waiting_pushes(&server);
    assert_only_the_newest_deployed(&server, &commits, &outputs);
    // post-receive: every push landed in git; the superseded ones exit 0.
    assert!(outputs.iter().all(|o| o.status.success()));
    assert_eq!(
        server.tip("refs/heads/main").as_deref(),
        Some(commits[4].as_str())
    );
}

#[test]
fn in_gate_mode_the_overtaken_pushes_are_rejected() {
    let server = Server::new();
    server.config(&COUNTED.replace("QUEUE", ""));
    server.gate();
    let (commits, outputs) = five_waiting_pushes(&server);
    assert_only_the_newest_deployed(&server, &commits, &outputs);
    for output in &outputs[..4] {
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("pre-receive hook declined"));
    }
    assert!(outputs[4].status.success());
    // The branch moved once, to the newest.
    assert_eq!(
        server.tip("refs/heads/main").as_deref(),
        Some(commits[4].as_str())
    );
}

#[test]
fn with_queue_all_every_push_deploys_in_turn() {
    let server = Server::new();
    server.config(&COUNTED.replace("QUEUE", "queue = \"all\""));
    let (commits, outputs) = five_waiting_pushes(&server);
    assert!(outputs.iter().all(|o| o.status.success()));
    let ran = std::fs::read_to_string(server.root.join("ran")).unwrap();
    assert_eq!(ran.lines().count(), 7, "{ran}");
    assert!(server.records().iter().all(|r| r["state"] != "superseded"));
    assert_eq!(
        server
            .records()
            .iter()
            .filter(|r| commits.contains(&r["commit"].as_str().unwrap().to_string()))
            .count(),
        5
    );
}
