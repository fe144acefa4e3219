//! Per-deploy control from `git push -o ats.…`, through real git push options into the real
//! hook, and the same flags on `ats-hook deploy`.

use pretty_assertions::assert_eq;

use crate::support::*;

const CONFIG: &str = r#"
[deploy]
root = "ROOT"
[[step]]
name = "migrate"
run = "touch migrated"
skippable = true
[[step]]
name = "build"
run = 'printf "%s" "$ATS_PUSH_NOTE" > note.txt'
[[step]]
name = "announce"
run = 'touch "$ATS_DEPLOY_ROOT/announced"'
after_switch = true
skippable = true
[restart]
command = 'echo "$ATS_RELEASE_ID" >> restarts'
"#;

/// A server whose repository advertises push options, as `ats-hook install` leaves it.
fn server() -> Server {
    let server = Server::new();
    server.config(CONFIG).advertise_push_options();
    server
}

fn restarts(server: &Server) -> usize {
    std::fs::read_to_string(server.root.join("restarts"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn skip_no_restart_and_a_note_shape_the_deploy_and_its_record() {
    let server = server();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    assert!(server.root.join("current/migrated").exists());
    assert_eq!(restarts(&server), 1);
    std::fs::remove_file(server.root.join("announced")).unwrap();

    let sha = clone.commit_file("app.py", "2\n");
    let note = "hotfix: login; $(touch pwned) `id` \"quoted\"";
    let push = clone.push_args(&[
        "-o",
        "ats.skip=migrate",
        "-o",
        "ats.skip=announce",
        "-o",
        "ats.no-restart",
        "-o",
        &format!("ats.note={note}"),
        "-o",
        "ci.skip",
        "main",
    ]);
    push.success()
        .stderr_has("the push asks: skip migrate, skip announce, no restart")
        .stderr_has(&format!("note: {note}"))
        .stderr_has("migrate: skipped, as the push asked (`ats.skip=migrate`)")
        .stderr_has("restart skipped: the push asked for `ats.no-restart`")
        .stderr_has(&format!("deployed {}", &sha[..7]));
    // What the user checks: the step and the restart did not run, the note reached the build
    // step as its value alone, and nothing in it ran.
    assert_eq!(server.live_file("app.py"), "2\n");
    assert!(!server.root.join("current/migrated").exists());
    assert!(!server.root.join("announced").exists());
    assert_eq!(restarts(&server), 1);
    assert_eq!(server.live_file("note.txt"), note);
    assert!(!server.root.join("current/pwned").exists());
    assert!(!clone.dir.join("pwned").exists());
    let record = server.last_record();
    assert_eq!(record["note"], note);
    assert_eq!(record["no_restart"], true);
    assert_eq!(record["steps"][0]["name"], "migrate");
    assert_eq!(record["steps"][0]["status"], "skipped");
    assert_eq!(record["steps"][1]["status"], "ok");
    assert_eq!(record["steps"][2]["name"], "announce");
    assert_eq!(record["steps"][2]["status"], "skipped");

    // The next push without options runs everything again.
    clone.commit_file("app.py", "3\n");
    clone.push().success();
    assert!(server.root.join("current/migrated").exists());
    assert_eq!(restarts(&server), 2);
    assert!(server.last_record().get("note").is_none());
}

#[test]
fn bad_options_deploy_nothing_and_the_gate_rejects_the_push() {
    let server = server();
    let clone = server.clone("work");
    let first = clone.commit_file("app.py", "1\n");
    for (option, error) in [
        ("ats.frobnicate", "unknown push option `ats.frobnicate`"),
        ("ats.skip=build", "cannot skip step `build`: the config does not mark it `skippable = true`"),
        ("ats.skip=nope", "cannot skip step `nope`: the config has no such step (it has: migrate, build, announce)"),
        ("ats.no-restart=1", "push option `ats.no-restart=1` takes no value"),
        ("ats.note=", "the note is empty"),
    ] {
        clone
            .push_args(&["-o", option, "main"])
            .stderr_has(&format!("nothing deployed: {error}"))
            .stderr_lacks("deploying");
        assert_eq!(server.live(), None, "{option}");
        assert!(server.releases().is_empty(), "{option}");
        // post-receive: git has moved the branch; push it again under a new commit.
        clone.commit(&format!("again after {option}"));
    }
    assert!(!server.root.join(".ats-hook/deploys.jsonl").exists());

    // Gate mode: the push is rejected and the branch stays.
    server.gate();
    let tip = server.tip("refs/heads/main");
    clone.commit_file("app.py", "2\n");
    clone
        .push_args(&["-o", "ats.skip=build", "main"])
        .failure()
        .stderr_has("push rejected, nothing deployed: cannot skip step `build`")
        .stderr_has("pre-receive hook declined");
    assert_eq!(server.tip("refs/heads/main"), tip);
    assert_ne!(tip.as_deref(), Some(first.as_str()));
    assert_eq!(server.live(), None);
}

#[test]
fn a_dry_run_shows_the_plan_and_deploys_nothing() {
    let server = server();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live();
    let sha = clone.commit_file("app.py", "2\n");
    clone
        .push_args(&["-o", "ats.dry-run", "-o", "ats.skip=migrate", "main"])
        .success()
        .stderr_has(&format!("dry run: would deploy {} (main)", &sha[..7]))
        .stderr_has("dry run: skipped:   step migrate, as asked")
        .stderr_has(&format!(
            "dry run: nothing deployed; `main` is at {} now: deploy it with your next push, or with `ats-hook deploy {}` on the server",
            &sha[..7],
            &sha[..7]
        ));
    assert_eq!(server.live(), live);
    assert_eq!(server.live_file("app.py"), "1\n");
    assert_eq!(server.records().len(), 1);
    // As the output says, `ats-hook deploy` deploys it.
    server.ats(&["deploy", &sha[..7]]).success();
    assert_eq!(server.live_file("app.py"), "2\n");

    // Gate mode: the plan, then the push is rejected so the branch stays.
    server.gate();
    let tip = server.tip("refs/heads/main");
    clone.commit_file("app.py", "3\n");
    clone
        .push_args(&["-o", "ats.dry-run", "main"])
        .failure()
        .stderr_has("dry run: would deploy")
        .stderr_has(
            "dry run: nothing deployed, and the push is rejected so that `main` stays where it was",
        );
    assert_eq!(server.tip("refs/heads/main"), tip);
    assert_eq!(server.live_file("app.py"), "2\n");
}

#[test]
fn deploy_by_hand_takes_the_same_flags() {
    let server = server();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    clone.commit_file("app.py", "2\n");
    // Only pushed, not deployed: a dry run first.
    clone.push_args(&["-o", "ats.dry-run", "main"]).success();
    server
        .ats(&[
            "deploy",
            "--skip",
            "migrate",
            "--no-restart",
            "--note",
            "by hand",
        ])
        .success()
        .stderr_has("migrate: skipped");
    assert_eq!(server.live_file("app.py"), "2\n");
    assert!(!server.root.join("current/migrated").exists());
    assert_eq!(restarts(&server), 1);
    assert_eq!(server.last_record()["note"], "by hand");
    server
        .ats(&["deploy", "--skip", "build"])
        .failure()
        .stderr_has("cannot skip step `build`");
    server
        .ats(&["deploy", "--note", "two\nlines"])
        .failure()
        .stderr_has("the note holds a control character");
    assert_eq!(server.records().len(), 2);
}

#[test]
fn a_repository_that_does_not_advertise_options_fails_in_git_and_check_says_how_to_fix() {
    let server = Server::new();
    server.config(CONFIG);
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone
        .push_args(&["-o", "ats.no-restart", "main"])
        .failure()
        .stderr_has("the receiving end does not support push options");
    server
        .ats(&["check"])
        .success()
        .stdout_has("push options: not advertised")
        .stdout_has(&format!(
            "fix: `git -C {} config receive.advertisePushOptions true`",
            server.bare.display()
        ));
    // `install` on the existing repository sets it.
    server
        .ats(&["install", "--root", server.root.to_str().unwrap()])
        .success()
        .stdout_has("set `receive.advertisePushOptions`");
    server
        .ats(&["check"])
        .success()
        .stdout_lacks("push options");
    clone
        .push_args(&["-o", "ats.no-restart", "main"])
        .success()
        .stderr_has("restart skipped");
}

/// `log`, `status` and `releases` show what a person reads a deploy by: the commit's subject
/// line, the push's note, who pushed; durations under a second in ms.
#[test]
fn the_history_shows_subject_note_and_pusher() {
    let server = server();
    let clone = server.clone("work");
    clone.write("app.py", "1\n");
    clone.commit("Add the login form");
    clone.push().success();
    clone.write("app.py", "2\n");
    let fix = clone.commit("Fix the login form\n\nThe body is not shown.");
    clone
        .push_args(&["-o", "ats.note=hotfix before the demo", "main"])
        .success();
    let live = server.live().unwrap();

    let log = server.ats(&["log"]).success().stdout();
    let line = log.lines().find(|l| l.starts_with(&live)).unwrap();
    assert!(
        line.contains(&format!("{} (main)", &fix[..7]))
            && line.contains("by tester  \"Fix the login form\"  (note: hotfix before the demo)"),
        "{log}"
    );
    // A deploy of a few steps takes well under a second here: shown in ms, not `0.0s`.
    assert!(!log.contains("0.0s"), "{log}");
    assert!(
        line.split_whitespace()
            .any(|w| w.ends_with("ms") && w[..w.len() - 2].parse::<u64>().is_ok()),
        "{line}"
    );
    assert!(!log.contains("The body"), "{log}");

    server
        .ats(&["status"])
        .success()
        .stdout_has("commit:      Fix the login form")
        .stdout_has("pushed by tester")
        .stdout_has("note:        hotfix before the demo")
        .stdout_has("by tester  \"Fix the login form\"  (note: hotfix before the demo)");
    let status: serde_json::Value =
        serde_json::from_str(&server.ats(&["status", "--json"]).success().stdout()).unwrap();
    assert_eq!(status["live"]["subject"], "Fix the login form");
    assert_eq!(status["live"]["note"], "hotfix before the demo");

    let releases = server.ats(&["releases"]).success().stdout();
    assert!(
        releases.lines().next().unwrap().contains("  BY  "),
        "{releases}"
    );
    let row = releases.lines().find(|l| l.contains(&live)).unwrap();
    assert!(
        row.contains("tester")
            && row.contains("\"Fix the login form\"  (note: hotfix before the demo)"),
        "{releases}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&server.ats(&["releases", "--json"]).success().stdout()).unwrap();
    let first = &json.as_array().unwrap()[0];
    assert_eq!(first["subject"], "Add the login form");
    assert_eq!(first["pusher"], "tester");
    assert_eq!(first["note"], serde_json::Value::Null);

    // A rollback names the commit it brings back.
    server.ats(&["rollback"]).success();
    let record = server.last_record();
    assert_eq!(record["action"], "rollback");
    assert_eq!(record["subject"], "Add the login form");
    server
        .ats(&["log"])
        .success()
        .stdout_has("\"Add the login form\"");
}
