//! `deploy`, `status`, `check`, `quickstart`.

use pretty_assertions::assert_eq;

use crate::support::*;

#[test]
fn deploy_by_hand_redeploys_and_status_reports_it() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"build\"\nrun = \"echo built > built.txt\"\n",
    );
    let clone = server.clone("work");
    clone.write("a", "one");
    let one = clone.commit("one");
    clone.push().success();
    clone.write("a", "two");
    let two = clone.commit("two");
    clone.push().success();
    let pushed = server.live().unwrap();

    // Redeploy the branch tip: a new release of the same commit.
    let redeploy = server.ats(&["deploy"]);
    redeploy
        .success()
        .stderr_has(&format!("ats-hook: deployed {} (main)", &two[..7]));
    let again = server.live().unwrap();
    assert_ne!(again, pushed);
    assert_eq!(server.live_file("built.txt"), "built\n");

    // Deploy an older commit by hand.
    server.ats(&["deploy", &one]).success();
    assert_eq!(server.live_file("a"), "one");
    assert_eq!(server.last_record()["commit"], one.as_str());

    let status = server.ats(&["status"]);
    status.success().stdout_has(&format!(
        "live:        {} ({} of main)",
        server.live().unwrap(),
        &one[..7]
    ));
    status
        .stdout_has("pushed by tester")
        .stdout_has("lock:        free")
        .stdout_has("releases:    4 on disk");

    let json: serde_json::Value =
        serde_json::from_str(&server.ats(&["status", "--json"]).success().stdout()).unwrap();
    assert_eq!(json["live"]["commit"], one.as_str());
    assert_eq!(json["live"]["release"], server.live().unwrap().as_str());
    assert_eq!(json["lock"], serde_json::Value::Null);
    assert_eq!(json["releases"].as_array().unwrap().len(), 4);

    server
        .ats(&["deploy", "no-such-rev"])
        .code(1)
        .stderr_has("`no-such-rev` does not name a commit");
}

#[test]
fn status_before_any_deploy() {
    let server = Server::new();
    server
        .ats(&["status"])
        .success()
        .stdout_has("live:        nothing yet");
}

#[test]
fn check_prints_the_plan() {
    let server = Server::new();
    server.config(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap(),
    );
    let check = server.ats(&["check"]);
    check.success();
    check
        .stdout_has("is valid")
        .stdout_has("deploys:   branches main")
        .stdout_has("model:     switch, then restart in place: users meet the new release before the health check does")
        .stdout_has("a push may skip it: `git push -o ats.skip=static`");
    check
        .stdout_has("step 1:    install (timeout 15m)")
        .stdout_has("step 2:    migrate (timeout 10m)");
    check
        .stdout_has("restart:   send SIGHUP to the pid in shared/gunicorn.pid")
        .stdout_has("           when none runs there, start: current/.venv/bin/gunicorn --daemon")
        .stdout_has("           commands run in /srv/app with a clean environment")
        .stdout_has("shared:    .env, log, media");
    check.stdout_lacks("env:       ");
    check.stdout_has("revision:  each release holds its commit in REVISION");
    check.stdout_has(
        "health:    GET http://127.0.0.1:8000/, expect 200, 2 in a row, every 500ms for up to 30s",
    );
    check.stdout_has("first waits up to 10s for the previous release's processes to go");
    check.stdout_has("after:     notify (timeout 15m; on failure keep the release)");
    check.stdout_has("builds .venv, stored under a key of its command and requirements.txt and `python3 --version`; reused while it holds");
    // No push yet: no commit to compute a key at.
    check.stdout_has("outputs:   (no branch tip to compute keys at");
}

#[test]
fn config_named_by_environment_variable_wins() {
    let server = Server::new();
    let other = server.path().join("elsewhere.toml");
    std::fs::write(&other, "[deploy]\nroot = \"/srv/elsewhere\"\n").unwrap();
    let mut cmd = command(BIN, server.path());
    cmd.args(["check", "--repo"])
        .arg(&server.bare)
        .env("ATS_HOOK_CONFIG", &other);
    run(&mut cmd, "check with ATS_HOOK_CONFIG")
        .success()
        .stdout_has("root:      /srv/elsewhere");
}

#[test]
fn quickstart_deploys_the_sample_app() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut cmd = command(BIN, tmp.path());
    cmd.arg("quickstart").arg("--dir").arg(&dir);
    let run = run(&mut cmd, "ats-hook quickstart");
    run.success();
    run.stdout_has("remote: install | built build/version.txt for commit");
    run.stdout_has("remote: migrate | applying 0001_initial.sql");
    run.stdout_has("remote: ats-hook: deployed");
    let version =
        std::fs::read_to_string(dir.join("server/app/current/build/version.txt")).unwrap();
    assert_eq!(version.trim().len(), 40);
    assert_eq!(
        std::fs::read_to_string(dir.join("server/app/shared/db/applied")).unwrap(),
        "0001_initial.sql\n"
    );
    // A second run into the same folder refuses instead of mixing demos.
    let mut again = command(BIN, tmp.path());
    again.arg("quickstart").arg("--dir").arg(&dir);
    crate::support::run(&mut again, "quickstart again")
        .code(1)
        .stderr_has("is not empty");
}
