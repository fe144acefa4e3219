//! Health checks against a real HTTP server: a release that does not serve, or serves the old
//! commit, is switched back.

use pretty_assertions::assert_eq;

use crate::support::*;

fn config(health: &str) -> String {
    format!(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"build\"\nrun = 'printf \"%s\\n\" \"$ATS_COMMIT\" > version.txt'\n[restart]\ncommand = 'echo restarted \"$ATS_RELEASE_ID\" >> \"$ATS_DEPLOY_ROOT/restarts\"'\n[health]\n{health}"
    )
}

#[test]
fn a_release_that_serves_its_commit_passes() {
    let server = Server::new();
    let http = HttpServer::start("files", Some(&server.root.join("current")), server.path());
    server.config(&config(&format!(
        "url = \"{}\"\nexpect_body = \"{{commit}}\"\ninterval = \"100ms\"\ntimeout = \"10s\"\n",
        http.url("version.txt")
    )));
    let clone = server.clone("work");
    let sha = clone.commit_file("a", "a");
    let push = clone.push();
    push.success()
        .stderr_has("ats-hook: health: ok after 2 probe(s) in ")
        .stderr_has(" (2 in a row): HTTP 200");
    assert!(push.summary().contains("health "), "{}", push.summary());
    assert_eq!(server.last_record()["state"], "succeeded");
    assert_eq!(server.live_file("version.txt").trim(), sha);
}

#[test]
fn an_app_still_serving_the_old_commit_is_caught_and_switched_back() {
    let server = Server::new();
    server.config(&config("command = \"true\"\n"));
    let clone = server.clone("work");
    let old = clone.commit_file("a", "v1");
    clone.push().success();
    let old_release = server.live().unwrap();
    // The app server resolved `current` when it started: it keeps serving the old release.
    let http = HttpServer::start("files", None, &server.root.join("current"));
    server.config(&config(&format!(
        "url = \"{}\"\nexpect_body = \"{{commit}}\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
        http.url("version.txt")
    )));
    let new = clone.commit_file("a", "v2");
    let push = clone.push();
    push.success()
        .stderr_has(&format!("without `{new}` in the body: \"{old}\""))
        .stderr_has("health check failed after ")
        .stderr_has(&format!(
            "The app still serves the previous commit {}",
            &old[..7]
        ))
        .stderr_has("`systemctl_action = \"restart\"`")
        .stderr_has(&format!("switched current back to {old_release}"));
    assert_eq!(
        push.summary(),
        format!(
            "ats-hook: deploy FAILED at health check; switched back, {} is live again",
            &old[..7]
        )
    );
    assert_eq!(server.live(), Some(old_release.clone()));
    let record = server.last_record();
    assert_eq!(record["state"], "rolled-back");
    assert_eq!(record["failed_step"], "health check");
    assert!(record["error"].as_str().unwrap().contains("probe(s)"));
    // The old release was restarted after the switch back.
    let restarts = std::fs::read_to_string(server.root.join("restarts")).unwrap();
    assert_eq!(
        restarts.lines().last(),
        Some(format!("restarted {old_release}").as_str()),
        "{restarts}"
    );
}

#[track_caller]
fn first_deploy_fails_health(health: &str, needle: &str) {
    let server = Server::new();
    server.config(&config(health));
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    let push = clone.push();
    // `ROOT` in the needle stands for the deploy root.
    push.success()
        .stderr_has(&needle.replace("ROOT", server.root.to_str().unwrap()));
    assert_eq!(
        push.summary(),
        "ats-hook: deploy FAILED at health check; nothing is live"
    );
    assert_eq!(
        server.live(),
        None,
        "a release that failed its health check stayed live"
    );
    assert_eq!(server.last_record()["state"], "rolled-back");
}

#[test]
fn a_refused_connection_fails_the_check() {
    let port = closed_port();
    first_deploy_fails_health(
        &format!(
            "url = \"http://127.0.0.1:{port}/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n"
        ),
        "last answer: connection refused",
    );
}

#[test]
fn a_server_that_never_answers_fails_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let http = HttpServer::start("hang", None, tmp.path());
    first_deploy_fails_health(
        &format!(
            "url = \"{}\"\nprobe_timeout = \"300ms\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
            http.url("health")
        ),
        "last answer: no answer within 300ms",
    );
}

#[test]
fn a_server_error_fails_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let http = HttpServer::start("500", None, tmp.path());
    first_deploy_fails_health(
        &format!(
            "url = \"{}\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n",
            http.url("health")
        ),
        "last answer: HTTP 500 (expected 200): \"boom\"",
    );
}

#[test]
fn a_health_command_is_run_in_the_new_release() {
    first_deploy_fails_health(
        "command = 'echo \"not ready in $PWD\"; exit 1'\ninterval = \"100ms\"\ntimeout = \"300ms\"\n",
        "`echo \"not ready in $PWD\"; exit 1` failed (exit 1): \"not ready in ROOT/",
    );
}

/// One passing answer is not enough: `passes` in a row are, and a failure in between starts the
/// count again.
#[test]
fn a_release_is_healthy_after_passes_in_a_row() {
    let server = Server::new();
    server.config(&config(
        "command = 'n=$(cat \"$ATS_DEPLOY_ROOT/probes\" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > \"$ATS_DEPLOY_ROOT/probes\"; test $n -ne 2'\ninterval = \"50ms\"\npasses = 2\n",
    ));
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    clone
        .push()
        .success()
        .stderr_has("health: ok after 4 probe(s) in ")
        .stderr_has(" (2 in a row)");
    assert_eq!(
        std::fs::read_to_string(server.root.join("probes"))
            .unwrap()
            .trim(),
        "4"
    );
}

/// `https://` health URLs against a real TLS server on loopback, whose certificate a private CA
/// (made with openssl) signed: checked against `ca_file`, refused without it, and not checked
/// at all only with `insecure`, which the output says.
#[test]
fn an_https_health_check_trusts_the_system_or_the_ca_file_and_insecure_only_on_loopback() {
    let server = Server::new();
    let ca = TestCa::new(&server.path().join("ca"));
    let https = HttpServer::start_tls(
        "files",
        Some(&server.root.join("current")),
        server.path(),
        &ca,
    );
    let health = |extra: &str| {
        config(&format!(
            "url = \"{}\"\nexpect_body = \"{{commit}}\"\ninterval = \"100ms\"\ntimeout = \"3s\"\n{extra}",
            https.https_url("localhost", "version.txt")
        ))
    };
    let clone = server.clone("work");

    // The system's roots do not know the private CA: the check fails, and says why.
    server.config(&health(""));
    clone.commit_file("a", "1");
    clone
        .push()
        .success()
        .stderr_has("deploy FAILED at health check")
        .stderr_has("UnknownIssuer");
    assert_eq!(server.last_record()["state"], "rolled-back");

    // With the CA's certificate (relative to the deploy root), it passes.
    std::fs::create_dir_all(server.root.join("shared")).unwrap();
    std::fs::copy(&ca.ca_cert, server.root.join("shared/ca.pem")).unwrap();
    server.config(&health("ca_file = \"shared/ca.pem\"\n"));
    let sha = clone.commit_file("a", "2");
    clone.push().success().stderr_has("(2 in a row): HTTP 200");
    assert_eq!(server.live_file("version.txt").trim(), sha);

    // `insecure`: no check, said aloud; refused for a URL that is not loopback.
    server.config(&health("insecure = true\n"));
    clone.commit_file("a", "3");
    clone.push().success().stderr_has(
        "health: the TLS certificate is not checked (`health.insecure`, loopback only)",
    );
    server.config(&config(
        "url = \"https://example.com/health\"\ninsecure = true\n",
    ));
    server
        .ats(&["check"])
        .failure()
        .stderr_has("`health.insecure` is only for a loopback URL (127.0.0.1, ::1, localhost), not `https://example.com/…`");
    // A CA file that is not there fails the check with its path; the live release stays.
    server.config(&health("ca_file = \"shared/missing.pem\"\n"));
    clone.commit_file("a", "4");
    clone
        .push()
        .success()
        .stderr_has("failed to read the CA file")
        .stderr_has("shared/missing.pem");
    assert_eq!(server.live_file("a"), "3");
}

/// `processes`: the app's processes must work in the new release. A server that kept its old
/// release as working directory fails the check (no URL needed), named with the release it
/// runs; restarted in the new one, it passes.
#[test]
fn the_processes_check_proves_which_release_the_app_runs() {
    let server = Server::new();
    let restart = "[restart]\ncommand = 'kill $(cat shared/app.pid) 2>/dev/null; cd current && setsid sleep 600 >/dev/null 2>&1 < /dev/null & echo $! > shared/app.pid'\n";
    let health = "[health]\nprocesses = [\"shared/app.pid\"]\ntimeout = \"1s\"\ninterval = \"100ms\"\nsettle = \"1s\"\n";
    server.config(&format!("[deploy]\nroot = \"ROOT\"\n{restart}{health}"));
    std::fs::create_dir_all(server.root.join("shared")).unwrap();
    let clone = server.clone("work");
    clone.commit_file("a", "1");
    let stop_app = || {
        if let Ok(pid) = std::fs::read_to_string(server.root.join("shared/app.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                send_signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    };
    let push = clone.push();
    push.success()
        .stderr_has("health: ok after")
        .stderr_has("1 process of `shared/app.pid` in ");
    let first = server.live().unwrap();

    // A restart that leaves the server where it was: it still works in the first release.
    server.config(&format!(
        "[deploy]\nroot = \"ROOT\"\n[restart]\ncommand = 'true'\n{health}"
    ));
    clone.commit_file("a", "2");
    let push = clone.push();
    let pid = std::fs::read_to_string(server.root.join("shared/app.pid")).unwrap();
    push.success()
        .stderr_has(&format!(
            "pid {} (sleep) of `shared/app.pid` runs in release {first} (its working directory), not in ",
            pid.trim()
        ))
        .stderr_has("deploy FAILED at health check; switched back");
    assert_eq!(server.live().unwrap(), first);

    // Restarted in the new release, it passes.
    server.config(&format!("[deploy]\nroot = \"ROOT\"\n{restart}{health}"));
    clone.commit_file("a", "3");
    clone.push().success().stderr_has("health: ok after");
    let live = server.live().unwrap();
    let pid: i32 = std::fs::read_to_string(server.root.join("shared/app.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        server.root.join("releases").join(&live)
    );
    stop_app();

    // Working in the new release but started on an old release's file: named too.
    let stale = "[restart]\ncommand = 'kill $(cat shared/app.pid) 2>/dev/null; old=$PWD/$(ls -d releases/*/ | head -1); cd current && setsid sh -c \"sleep 600; :\" app \"$old\" >/dev/null 2>&1 < /dev/null & echo $! > shared/app.pid'\n";
    server.config(&format!("[deploy]\nroot = \"ROOT\"\n{stale}{health}"));
    clone.commit_file("a", "3b");
    clone
        .push()
        .success()
        .stderr_has(" but runs `")
        .stderr_has("restart it so it starts from the new release")
        .stderr_has("deploy FAILED at health check");
    stop_app();

    // A pidfile naming no process fails the check, saying so.
    server.config(&format!(
        "[deploy]\nroot = \"ROOT\"\n[restart]\ncommand = 'true'\n{health}"
    ));
    clone.commit_file("a", "4");
    clone
        .push()
        .success()
        .stderr_has("`shared/app.pid` has no running process")
        .stderr_has("deploy FAILED at health check");
}
