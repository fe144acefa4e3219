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
