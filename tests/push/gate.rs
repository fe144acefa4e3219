//! Gate mode: ats-hook as `hooks/pre-receive`. A failed deploy rejects the push, so the branch on
//! the server always equals what is live.

use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::*;

const CONFIG: &str = r#"
[deploy]
root = "ROOT"
[[step]]
name = "build"
run = '''
if [ -e slow ]; then touch "$ATS_DEPLOY_ROOT/started"; while [ ! -e "$ATS_DEPLOY_ROOT/go" ]; do sleep 0.05; done; fi
if [ -e broken ]; then echo "build failed" >&2; exit 2; fi
printf '%s\n' "$ATS_COMMIT" > version.txt
'''
"#;

fn gate_server() -> Server {
    let server = Server::new();
    server.gate().config(CONFIG);
    server
}

#[test]
fn a_failed_deploy_rejects_the_push_and_the_branch_stays_live() {
    let server = gate_server();
    let clone = server.clone("work");
    let good = clone.commit_file("app", "v1");
    let push = clone.push();
    push.success()
        .stderr_has(&format!("ats-hook: deployed {}", &good[..7]));
    assert_eq!(server.tip("refs/heads/main"), Some(good.clone()));
    let live = server.live().unwrap();

    clone.write("broken", "");
    clone.commit("broken");
    let push = clone.push();
    push.failure()
        .stderr_has("build | build failed")
        .stderr_has(&format!(
            "deploy FAILED at step build (exit 2); {} is still live",
            &good[..7]
        ))
        .stderr_has("pre-receive hook declined");
    assert_eq!(
        server.tip("refs/heads/main"),
        Some(good.clone()),
        "the branch moved past what is live"
    );
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.live_file("version.txt").trim(), good);
    let record = server.last_record();
    assert_eq!(record["hook"], "pre-receive");
    assert_eq!(record["state"], "failed");
}

#[test]
fn new_branch_fast_forward_and_force_push_all_deploy() {
    let server = gate_server();
    let clone = server.clone("work");
    let first = clone.commit_file("app", "v1");
    clone.push().success();
    assert_eq!(server.live_file("version.txt").trim(), first);

    let second = clone.commit_file("app", "v2");
    clone.push().success();
    assert_eq!(server.live_file("version.txt").trim(), second);
    assert_eq!(server.tip("refs/heads/main"), Some(second.clone()));

    clone.write("app", "v2, amended");
    clone
        .git(&["commit", "--quiet", "--amend", "-am", "second, rewritten"])
        .success();
    let rewritten = clone.head();
    clone.push().failure().stderr_has("rejected");
    clone.push_args(&["--force", "main"]).success();
    assert_eq!(server.tip("refs/heads/main"), Some(rewritten.clone()));
    assert_eq!(server.live_file("version.txt").trim(), rewritten);
    assert_eq!(server.live_file("app"), "v2, amended");
}

#[test]
fn a_ref_that_is_not_selected_is_accepted_without_deploying() {
    let server = gate_server();
    let clone = server.clone("work");
    clone.git(&["checkout", "-q", "-b", "feature"]).success();
    let sha = clone.commit_file("app", "wip");
    clone
        .push_args(&["feature"])
        .success()
        .stderr_has("ignored `refs/heads/feature`");
    assert_eq!(server.tip("refs/heads/feature"), Some(sha));
    assert!(server.records().is_empty());
}

#[test]
fn a_second_push_deploys_from_the_right_base_when_the_first_fails() {
    let server = gate_server();
    let clone = server.clone("work");
    let base = clone.commit_file("app", "v1");
    clone.push().success();
    let base_release = server.live().unwrap();

    clone.write("slow", "").write("broken", "");
    let failing = clone.commit("slow and broken");
    std::fs::remove_file(clone.dir.join("slow")).unwrap();
    std::fs::remove_file(clone.dir.join("broken")).unwrap();
    let fixed = clone.commit("fixed");

    let first = clone.spawn_push(&[&format!("{failing}:refs/heads/main")]);
    wait_for("the first deploy's step", Duration::from_secs(30), || {
        server.root.join("started").exists()
    });
    let second = clone.spawn_push(&[&format!("{fixed}:refs/heads/main")]);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(server.root.join("go"), "").unwrap();

    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert!(!first.status.success(), "the failing push was accepted");
    assert!(second.status.success(), "{second_err}");
    assert!(
        second_err.contains("waiting for the deploy lock held by pid"),
        "{second_err}"
    );
    assert_eq!(server.tip("refs/heads/main"), Some(fixed.clone()));
    assert_eq!(server.live_file("version.txt").trim(), fixed);
    let last = server.last_record();
    assert_eq!(last["previous_release"], base_release.as_str());
    assert_eq!(last["old_commit"], base.as_str());
}

#[test]
fn a_push_based_on_a_commit_that_is_no_longer_the_branch_is_refused() {
    let server = gate_server();
    let clone = server.clone("work");
    clone.commit_file("app", "v1");
    clone.push().success();

    clone.write("slow", "");
    let first = clone.commit("slow");
    // A second clone, made now, pushes its own commit on the same base.
    let other = server.clone("other");
    other.git(&["fetch", "-q", "staging"]).success();
    other
        .git(&["reset", "-q", "--hard", "staging/main"])
        .success();
    let theirs = other.commit_file("other", "theirs");

    let push_first = clone.spawn_push(&[&format!("{first}:refs/heads/main")]);
    wait_for("the first deploy's step", Duration::from_secs(30), || {
        server.root.join("started").exists()
    });
    let push_other = other.spawn_push(&["main"]);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(server.root.join("go"), "").unwrap();
    assert!(push_first.wait_with_output().unwrap().status.success());
    let out = push_other.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("another push landed first; fetch, then push again"),
        "{err}"
    );
    assert_eq!(server.tip("refs/heads/main"), Some(first.clone()));
    assert_eq!(server.live_file("version.txt").trim(), first);
    assert_ne!(server.live_file("version.txt").trim(), theirs);
}
