//! `rollback`, `releases`, `log`, `deploy --dry-run`, steps after the switch, pruning order.

use pretty_assertions::assert_eq;

use crate::support::*;

const CONFIG: &str = r#"
[deploy]
root = "ROOT"
keep_releases = 4
[[step]]
name = "build"
run = "test ! -e broken || exit 4"
[restart]
command = 'echo "$ATS_RELEASE_ID" >> "$ATS_DEPLOY_ROOT/restarts"'
"#;

/// Deploys v1 (ok), v2 (fails), v3 (ok); returns their release ids and commits.
fn three_deploys(server: &Server) -> (Vec<String>, Vec<String>) {
    server.config(CONFIG);
    let clone = server.clone("work");
    let mut commits = Vec::new();
    commits.push(clone.commit_file("app", "v1"));
    clone.push().success();
    clone.write("broken", "");
    commits.push(clone.commit_file("app", "v2"));
    clone.push().success();
    std::fs::remove_file(clone.dir.join("broken")).unwrap();
    commits.push(clone.commit_file("app", "v3"));
    clone.push().success();
    let ids = server
        .records()
        .iter()
        .map(|r| r["release"].as_str().unwrap().to_string())
        .collect();
    (ids, commits)
}

fn last_restart(server: &Server) -> String {
    let text = std::fs::read_to_string(server.root.join("restarts")).unwrap();
    text.lines().last().unwrap().to_string()
}

#[test]
fn rollback_goes_to_the_previous_good_release_and_back() {
    let server = Server::new();
    let (ids, commits) = three_deploys(&server);
    assert_eq!(server.live().as_deref(), Some(ids[2].as_str()));

    let run = server.ats(&["rollback"]);
    run.success().stderr_has(&format!(
        "rolling back from {} to {} ({} of main)",
        ids[2],
        ids[0],
        &commits[0][..7]
    ));
    assert!(run.summary().starts_with(&format!(
        "ats-hook: rolled back to {} (main), release {}",
        &commits[0][..7],
        ids[0]
    )));
    assert_eq!(
        server.live().as_deref(),
        Some(ids[0].as_str()),
        "the failed v2 must be skipped"
    );
    assert_eq!(server.live_file("app"), "v1");
    assert_eq!(last_restart(&server), ids[0]);
    let record = server.last_record();
    assert_eq!(record["action"], "rollback");
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["release"], ids[0].as_str());
    assert_eq!(record["previous_release"], ids[2].as_str());

    // Nothing older went live: a clear refusal, nothing changed.
    server.ats(&["rollback"]).code(1).stderr_has(&format!(
        "nothing to roll back to: no release older than `{}` went live and is still on disk",
        ids[0]
    ));
    // Forward again, by name; status follows.
    server.ats(&["rollback", &ids[2]]).success();
    assert_eq!(server.live().as_deref(), Some(ids[2].as_str()));
    server.ats(&["status"]).success().stdout_has(&format!(
        "live:        {} ({} of main)",
        ids[2],
        &commits[2][..7]
    ));
}

#[test]
fn rollback_refuses_unknown_failed_and_live_releases() {
    let server = Server::new();
    let (ids, _) = three_deploys(&server);
    let before = server.records().len();
    server
        .ats(&["rollback", "20990101T000000Z-0000000"])
        .code(1)
        .stderr_has("no release `20990101T000000Z-0000000` on disk (pruned, or never made)");
    server
        .ats(&["rollback", &ids[1]])
        .code(1)
        .stderr_has("never went live successfully");
    server
        .ats(&["rollback", &ids[2]])
        .code(1)
        .stderr_has("is already live");
    assert_eq!(
        server.records().len(),
        before,
        "a refused rollback was recorded"
    );
    assert_eq!(server.live().as_deref(), Some(ids[2].as_str()));
}

#[test]
fn rollback_before_any_deploy_is_refused() {
    let server = Server::new();
    server
        .ats(&["rollback"])
        .code(1)
        .stderr_has("nothing to roll back to: no release went live yet");
}

#[test]
fn releases_lists_states_and_markers() {
    let server = Server::new();
    let (ids, commits) = three_deploys(&server);
    let text = server.ats(&["releases"]);
    text.success()
        .stdout_has(&format!(
            "* {}  {}  main          succeeded    ",
            ids[2],
            &commits[2][..7]
        ))
        .stdout_has("(live)")
        .stdout_has(&format!(
            "  {}  {}  main          failed",
            ids[1],
            &commits[1][..7]
        ))
        .stdout_has("(rollback target)");
    let json: serde_json::Value =
        serde_json::from_str(&server.ats(&["releases", "--json"]).success().stdout()).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["id"], ids[0].as_str());
    assert_eq!(list[0]["rollback_target"], true);
    assert_eq!(list[1]["state"], "failed");
    assert_eq!(list[2]["live"], true);
}

#[test]
fn log_lists_the_history_and_shows_one_deploy() {
    let server = Server::new();
    let (ids, commits) = three_deploys(&server);
    let list = server.ats(&["log"]);
    list.success()
        .stdout_has(&format!("{}  deploy    failed       ", ids[1]))
        .stdout_has("step `build` failed (exit 4)");
    let one = server.ats(&["log", &ids[1]]);
    one.success()
        .stdout_has("ats-hook: error: step `build` failed (exit 4)")
        .stdout_has("deploy FAILED at step build");
    let json: serde_json::Value =
        serde_json::from_str(&server.ats(&["log", "--json", &ids[0]]).success().stdout()).unwrap();
    assert_eq!(json["record"]["state"], "succeeded");
    assert!(json["output"]
        .as_str()
        .unwrap()
        .contains("ats-hook: deployed"));
    server
        .ats(&["log", "no-such-deploy"])
        .code(1)
        .stderr_has("no deploy `no-such-deploy` in the history");
    // A deploy found by the start of its commit, or by its release.
    server
        .ats(&["log", &commits[0][..7]])
        .success()
        .stdout_has(&format!("deployed {}", &commits[0][..7]));
    server
        .ats(&["log", &ids[0]])
        .success()
        .stdout_has(&format!("deployed {}", &commits[0][..7]));
    // Rollback ids are longer; the columns stay aligned.
    server.ats(&["rollback"]).success();
    let list = server.ats(&["log"]);
    let stdout = list.success().stdout();
    let columns: Vec<usize> = stdout
        .lines()
        .map(|line| {
            line.find("  deploy  ")
                .or_else(|| line.find("  rollback  "))
                .unwrap()
        })
        .collect();
    assert_eq!(columns.len(), 4, "{stdout}");
    assert!(columns.iter().all(|c| *c == columns[0]), "{stdout}");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let server = Server::new();
    let (ids, commits) = three_deploys(&server);
    let records = server.records().len();
    let run = server.ats(&["deploy", "--dry-run", &commits[0]]);
    run.success()
        .stdout_has(&format!(
            "would deploy {} (main) as {}",
            &commits[0][..7],
            server.root.join("releases").display()
        ))
        .stdout_has(&format!("live now:  {}", ids[2]))
        .stdout_has("step 1:    build")
        .stdout_has("restart:   echo");
    assert_eq!(server.records().len(), records);
    assert_eq!(server.releases().len(), 3);
    assert_eq!(server.live().as_deref(), Some(ids[2].as_str()));
}

#[test]
fn steps_after_the_switch_report_and_roll_back_when_told() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"notify\"\nrun = \"echo notifying; exit 1\"\nafter_switch = true\n",
    );
    let clone = server.clone("work");
    let sha = clone.commit_file("a", "v1");
    let push = clone.push();
    push.success()
        .stderr_has("notify | notifying")
        .stderr_has("step `notify` failed after the switch");
    assert!(push
        .summary()
        .starts_with(&format!("ats-hook: deployed {}", &sha[..7])));
    let live = server.live().unwrap();
    let record = server.last_record();
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["steps"][0]["status"], "failed");

    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"clear-cache\"\nrun = \"test ! -e broken\"\nafter_switch = true\nrollback_on_failure = true\n",
    );
    clone.write("broken", "");
    clone.commit("broken");
    let push = clone.push();
    assert_eq!(
        push.summary(),
        format!(
            "ats-hook: deploy FAILED at step clear-cache; switched back, {} is live again",
            &sha[..7]
        )
    );
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.last_record()["state"], "rolled-back");
}

#[test]
fn pruning_removes_failed_releases_first() {
    let server = Server::new();
    let (ids, _) = three_deploys(&server);
    let clone = server.clone("again");
    clone.git(&["fetch", "-q", "staging"]).success();
    clone
        .git(&["reset", "-q", "--hard", "staging/main"])
        .success();
    clone.commit_file("app", "v4");
    clone.push().success();
    let v4 = server.live().unwrap();
    clone.commit_file("app", "v5");
    clone.push().success();
    let v5 = server.live().unwrap();
    // keep_releases = 4 and five on disk: the failed v2 goes, not the older v1.
    let mut expected = vec![ids[0].clone(), ids[2].clone(), v4, v5];
    expected.sort();
    assert_eq!(server.releases(), expected);
}
