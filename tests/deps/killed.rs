//! Builds that were killed or timed out are never used.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::collections::BTreeSet;

use super::*;

/// The install step with a pause after pip, while `ROOT/pause` exists: a build whose
/// virtualenv looks whole, killed before it finished.
const PAUSING: &str = r#" && if [ -e \"$ATS_DEPLOY_ROOT/pause\" ]; then echo $PPID > \"$ATS_DEPLOY_ROOT/hook.pid\"; echo $$ > \"$ATS_DEPLOY_ROOT/step.pid\"; sleep 300; fi""#;

#[test]
fn builds_that_were_killed_or_timed_out_are_never_used() {
    let server = Server::new();
    let config = venv_config(5, "").replace(
        "-r requirements.txt\"",
        &format!("-r requirements.txt{PAUSING}"),
    );
    server.config(&config);
    let clone = server.clone("work");
    clone.write("requirements.txt", &pin(OLD));
    clone.commit("first");
    clone.push().success();
    let live = server.live().unwrap();
    clone.commit_file("requirements.txt", &pin(NEW));
    let pause = server.root.join("pause");
    let (hook_pid, step_pid) = (server.root.join("hook.pid"), server.root.join("step.pid"));

    // 1. The build's own processes killed with SIGKILL: the step fails. (Each attempt is a
    // new commit of a file that is not an input: the same key every time.)
    std::fs::write(&pause, "").unwrap();
    clone.commit_file("app.py", "1\n");
    let push = clone.spawn_push(&["main"]);
    let step = pid_in(&step_pid);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(step),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("deploy FAILED at step install (killed by SIGKILL, exit 137)"),
        "{stderr}"
    );
    assert_eq!(server.builds("install"), BTreeSet::from([live.clone()]));

    // 2. The hook itself killed with SIGKILL, once the virtualenv is whole: an unfinished
    // build stays on disk, and no key names it.
    std::fs::remove_file(&step_pid).unwrap();
    std::fs::remove_file(&hook_pid).unwrap();
    clone.commit_file("app.py", "2\n");
    let (push, hook) = clone.spawn_push_until_pid(&hook_pid);
    let step = pid_in(&step_pid);
    send_signal(hook, nix::sys::signal::Signal::SIGKILL);
    push.wait_with_output().unwrap();
    // The step dies with the hook; what it built stays in its own folder, which no later build
    // uses.
    wait_for(
        "the step to die with its hook",
        std::time::Duration::from_secs(10),
        || !alive(step),
    );
    let killed: Vec<String> = server
        .builds("install")
        .into_iter()
        .filter(|b| *b != live)
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");
    let killed = killed[0].clone();
    assert!(server
        .root
        .join("outputs/install")
        .join(&killed)
        .join(".venv/bin/python")
        .exists());
    assert_eq!(server.live(), Some(live.clone()));

    // 3. Past its timeout (the same key: the timeout is not part of it).
    server.config(&config.replace("timeout = \"5m\"", "timeout = \"1s\""));
    std::fs::remove_file(&pause).unwrap();
    clone.commit_file("app.py", "3\n");
    let push = clone.push();
    push.success()
        .stderr_has("did not finish (its process died); recording it as interrupted")
        .stderr_has("install: building .venv")
        .stderr_has("deploy FAILED at step install (timed out after 1s)");
    assert_eq!(live_version(&server), OLD);

    // 4. The next push builds from scratch, in a folder of its own, and runs.
    server.config(&config);
    clone.commit_file("app.py", "4\n");
    let push = clone.push();
    push.success()
        .stderr_has("install: building .venv")
        .stderr_lacks("install: reused");
    let now = server.live().unwrap();
    assert_eq!(server.build_of(&now, "install", ".venv"), now);
    assert_eq!(live_version(&server), NEW);
    // The killed build's folder went with the prune.
    assert!(!server.builds("install").contains(&killed));
    let records = server.records();
    let states: Vec<&str> = records
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["succeeded", "failed", "interrupted", "failed", "succeeded"]
    );
}
