//! `[notify]`: a real command and a real HTTP receiver on loopback hear of every outcome; one
//! that fails or hangs changes nothing of the deploy, and the webhook's token is never printed.

use std::path::Path;

use pretty_assertions::assert_eq;
use serde_json::Value;

use crate::support::*;

const STEPS: &str = r#"
[deploy]
root = "ROOT"
[[step]]
name = "build"
run = 'test ! -e broken || { echo "build broke" >&2; exit 4; }'
[health]
command = "test ! -e unhealthy"
timeout = "1s"
interval = "100ms"
"#;

/// What the receiver kept: each POST's path, content type and JSON body, in order.
fn received(dir: &Path) -> Vec<(String, String, Value)> {
    let mut posts = Vec::new();
    for n in 0.. {
        let Ok(body) = std::fs::read(dir.join(format!("{n}.body"))) else {
            break;
        };
        let meta = std::fs::read_to_string(dir.join(format!("{n}.meta"))).unwrap();
        let mut lines = meta.lines();
        posts.push((
            lines.next().unwrap().to_string(),
            lines.next().unwrap().to_string(),
            serde_json::from_slice(&body).unwrap(),
        ));
    }
    posts
}

/// The command's notifications: one JSON record per line, as it wrote them.
fn heard(server: &Server) -> Vec<Value> {
    std::fs::read_to_string(server.root.join("notified.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_command_and_a_webhook_hear_of_every_outcome() {
    let server = Server::new();
    let inbox = server.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let receiver = HttpServer::start("record", Some(&inbox), server.path());
    server.config(&format!(
        "{STEPS}[notify]\ncommand = 'cat >> notified.jsonl; echo >> notified.jsonl; echo \"told of $ATS_NOTIFY_EVENT\"'\nwebhook = \"{}\"\n",
        receiver.url("hooks/T000/SECRET-TOKEN")
    ));
    let clone = server.clone("work");
    let first = clone.commit_file("a", "1");
    clone
        .push()
        .success()
        .stderr_has("notify | told of succeeded")
        .stderr_has(&format!(
            "notify: posted the succeeded to http://127.0.0.1:{}/… (HTTP 200)",
            receiver.port
        ));
    // A step that fails, a release that fails its health check, a rollback.
    clone.write("broken", "");
    clone.commit("broken");
    clone
        .push()
        .success()
        .stderr_has("deploy FAILED at step build");
    clone.git(&["rm", "-q", "broken"]).success();
    clone.write("unhealthy", "");
    clone.commit("unhealthy");
    clone
        .push()
        .success()
        .stderr_has("deploy FAILED at health check");
    clone.git(&["rm", "-q", "unhealthy"]).success();
    let second = clone.commit_file("a", "2");
    clone.push().success();
    server.ats(&["rollback"]).success();

    let events: Vec<String> = heard(&server)
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "succeeded",
            "failed",
            "rolled-back",
            "succeeded",
            "rollback"
        ]
    );
    let posts = received(&inbox);
    assert_eq!(posts.len(), 5);
    for ((path, content_type, body), command) in posts.iter().zip(heard(&server)) {
        assert_eq!(path, "/hooks/T000/SECRET-TOKEN");
        assert_eq!(content_type, "application/json");
        // The same record both ways: the history's, with what it was.
        assert_eq!(body, &command);
    }
    let records = server.records();
    assert_eq!(posts[0].2["commit"], first.as_str());
    assert_eq!(posts[0].2["id"], records[0]["id"]);
    assert_eq!(posts[1].2["failed_step"], "build");
    assert_eq!(posts[3].2["commit"], second.as_str());
    assert_eq!(posts[4].2["action"], "rollback");
    assert_eq!(posts[4].2["commit"], first.as_str());
    assert_eq!(posts[0].2["root"], server.root.to_str().unwrap());
    assert!(posts[0].2["summary"]
        .as_str()
        .unwrap()
        .starts_with(&format!("deployed {}", &first[..7])));
    // The token appears nowhere the pusher or an admin reads.
    for id in records.iter().map(|r| r["id"].as_str().unwrap()) {
        let log =
            std::fs::read_to_string(server.root.join(format!(".ats-hook/logs/{id}.log"))).unwrap();
        assert!(!log.contains("SECRET-TOKEN"), "{log}");
        assert!(log.contains("notify: posted the"), "{log}");
    }
}

#[test]
fn slack_gets_a_line_of_text_and_only_the_outcomes_asked_for() {
    let server = Server::new();
    let inbox = server.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let receiver = HttpServer::start("record", Some(&inbox), server.path());
    server.config(&format!(
        "{STEPS}[notify]\nwebhook = \"{}\"\nslack = true\non = [\"failed\", \"rolled-back\"]\n",
        receiver.url("services/T0/B0/XYZ")
    ));
    let clone = server.clone("work");
    clone.write("a", "1");
    let live = clone.commit("Add the login form");
    clone.push().success().stderr_lacks("notify:");
    clone.write("broken", "");
    clone.commit("Break the build");
    clone
        .push_args(&["main"])
        .success()
        .stderr_has("notify: posted the failed to");
    let posts = received(&inbox);
    assert_eq!(posts.len(), 1);
    let text = posts[0].2["text"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "({}): deploy FAILED at step build",
            server.root.display()
        )) && text.contains("\"Break the build\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} is still live", &live[..7])),
        "{text}"
    );
    assert_eq!(posts[0].2.as_object().unwrap().len(), 1);
}

#[test]
fn a_notification_that_fails_or_hangs_changes_nothing() {
    let server = Server::new();
    let hang = HttpServer::start("hang", None, server.path());
    server.config(&format!(
        "{STEPS}[notify]\ncommand = \"echo partial; exit 3\"\nwebhook = \"{}\"\ntimeout = \"1s\"\n",
        hang.url("hooks/SECRET-TOKEN?key=SECRET2")
    ));
    let clone = server.clone("work");
    let sha = clone.commit_file("a", "1");
    let started = std::time::Instant::now();
    let push = clone.push();
    push.success()
        .stderr_has("notify | partial")
        .stderr_has("notify: command `echo partial; exit 3` failed (exit 3); the deploy's outcome stands")
        .stderr_has(&format!(
            "notify: webhook http://127.0.0.1:{}/… gave no answer within 1s; the deploy's outcome stands",
            hang.port
        ))
        .stderr_lacks("SECRET");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The pusher's last line is still the deploy's own, and the deploy stands.
    assert!(
        push.summary()
            .starts_with(&format!("ats-hook: deployed {}", &sha[..7])),
        "{}",
        push.summary()
    );
    assert_eq!(server.last_record()["state"], "succeeded");
    assert_eq!(server.live_file("a"), "1");

    // A receiver that answers 500, and one that is not there: said, and the deploy stands.
    let failing = HttpServer::start("500", None, server.path());
    for (url, said) in [
        (failing.url("x/SECRET"), "answered HTTP 500".to_string()),
        (
            format!("http://127.0.0.1:{}/x/SECRET", closed_port()),
            "failed:".to_string(),
        ),
    ] {
        server.config(&format!("{STEPS}[notify]\nwebhook = \"{url}\"\n"));
        clone.commit_file("a", &url);
        clone
            .push()
            .success()
            .stderr_has(&said)
            .stderr_lacks("SECRET");
        assert_eq!(server.last_record()["state"], "succeeded");
    }
    // `deploy` by hand exits 0 too.
    server
        .ats(&["deploy"])
        .success()
        .stderr_has("notify: webhook http://127.0.0.1:")
        .stderr_lacks("SECRET");
}

#[test]
fn an_https_webhook_is_checked_against_its_ca_file() {
    let server = Server::new();
    let ca = TestCa::new(&server.path().join("ca"));
    let inbox = server.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let receiver = HttpServer::start_tls("record", Some(&inbox), server.path(), &ca);
    let url = receiver.https_url("127.0.0.1", "hook/TOKEN");
    let clone = server.clone("work");
    server.config(&format!("{STEPS}[notify]\nwebhook = \"{url}\"\n"));
    clone.commit_file("a", "1");
    clone
        .push()
        .success()
        .stderr_has("UnknownIssuer")
        .stderr_lacks("TOKEN");
    assert!(received(&inbox).is_empty());
    server.config(&format!(
        "{STEPS}[notify]\nwebhook = \"{url}\"\nca_file = \"{}\"\n",
        ca.ca_cert.display()
    ));
    clone.commit_file("a", "2");
    clone
        .push()
        .success()
        .stderr_has("notify: posted the succeeded to https://127.0.0.1:");
    assert_eq!(received(&inbox).len(), 1);
}

#[test]
fn a_bad_notify_section_is_a_clear_config_error() {
    let server = Server::new();
    for (section, error) in [
        ("[notify]\n", "`notify`: set `command`, `webhook`, or both"),
        (
            "[notify]\nwebhook = \"ftp://h/SECRET\"\n",
            "`notify.webhook` must start with `http://` or `https://`, not `ftp://h/…`",
        ),
        (
            "[notify]\ncommand = \"true\"\nslack = true\n",
            "`notify.slack` shapes what `webhook` posts",
        ),
        (
            "[notify]\ncommand = \"true\"\non = []\n",
            "`notify.on` is empty",
        ),
        (
            "[notify]\ncommand = \"true\"\non = [\"deployed\"]\n",
            "unknown variant `deployed`",
        ),
        (
            "[notify]\ncommand = \"true\"\ntimeout = \"soon\"\n",
            "invalid duration `soon`",
        ),
    ] {
        server.config(&format!("{STEPS}{section}"));
        server
            .ats(&["check"])
            .failure()
            .stderr_has(error)
            .stderr_lacks("SECRET");
    }
}
