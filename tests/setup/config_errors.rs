//! Config mistakes: the message names the file, the key and the line; nothing deploys.

use crate::support::*;

#[track_caller]
fn check_fails(toml: Option<&str>, needles: &[&str]) {
    let server = Server::new();
    match toml {
        Some(toml) => {
            server.config(toml);
        }
        None => std::fs::remove_file(server.bare.join("ats-hook.toml")).unwrap(),
    }
    let file = server.bare.join("ats-hook.toml");
    let check = server.ats(&["check"]);
    check.code(1).stderr_has(&format!("`{}`", file.display()));
    for needle in needles {
        check.stderr_has(needle);
    }
    // The pusher reads the same message, and nothing is deployed.
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    let push = clone.push();
    push.success();
    for needle in needles {
        push.stderr_has(needle);
    }
    assert!(!server.root.exists());
}

#[test]
fn missing_config() {
    check_fails(None, &["no config at", "ats-hook install"]);
}

#[test]
fn bad_toml() {
    check_fails(
        Some("[deploy\nroot = \"ROOT\"\n"),
        &["invalid config", "line 1"],
    );
}

#[test]
fn unknown_key() {
    check_fails(
        Some("[deploy]\nroot = \"ROOT\"\nkeep_release = 3\n"),
        &["line 3", "unknown field `keep_release`"],
    );
}

#[test]
fn wrong_type() {
    check_fails(
        Some("[deploy]\nroot = \"ROOT\"\nkeep_releases = \"five\"\n"),
        &["line 3", "invalid type: string \"five\""],
    );
}

#[test]
fn bad_duration() {
    check_fails(
        Some("[deploy]\nroot = \"ROOT\"\nlock_timeout = \"soon\"\n"),
        &["line 3", "invalid duration `soon`"],
    );
}

#[test]
fn missing_root() {
    check_fails(
        Some("[deploy]\nbranches = [\"main\"]\n"),
        &["missing field `root`"],
    );
}

#[test]
fn unsafe_shared_path() {
    check_fails(
        Some("[deploy]\nroot = \"ROOT\"\n[shared]\npaths = [\"../etc\"]\n"),
        &["line 4", "without `..`"],
    );
}

#[test]
fn missing_env_file_fails_the_deploy_before_any_step() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n[env]\nfile = \"shared/.env\"\n[[step]]\nname = \"mark\"\nrun = \"touch $ATS_DEPLOY_ROOT/ran\"\n");
    server
        .ats(&["check"])
        .success()
        .stdout_has("MISSING: deploys will fail until it exists");
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    let push = clone.push();
    push.success().stderr_has("failed to read env file");
    assert_eq!(
        push.summary(),
        "ats-hook: deploy FAILED; nothing is live yet"
    );
    assert!(!server.root.join("ran").exists());
    assert_eq!(server.last_record()["state"], "failed");
}

#[test]
fn restart_start_without_a_signal() {
    check_fails(
        Some("[deploy]\nroot = \"ROOT\"\n[restart]\nstart = \"./run-app\"\n"),
        &["`restart.start` needs `restart.signal`"],
    );
}

#[test]
fn unknown_restart_environment() {
    check_fails(
        Some("[deploy]\nroot = \"ROOT\"\n[restart]\ncommand = \"true\"\nenv = \"minimal\"\n"),
        &["line 5", "unknown variant `minimal`", "`deploy`", "`clean`"],
    );
}

#[test]
fn health_with_no_passes() {
    check_fails(
        Some("[deploy]\nroot = \"ROOT\"\n[health]\ncommand = \"true\"\npasses = 0\n"),
        &["`health.passes` is 0"],
    );
}
