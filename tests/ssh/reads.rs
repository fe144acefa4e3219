//! Through the SSH gate: the pusher reads status, releases and log, rolls back only with a
//! key that may, and push options pass unchanged.

use crate::support::system::SshSetup;
use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;

use super::*;

/// `ats-hook status|releases|log|rollback --remote staging` from the pusher's clone, through the
/// deploy key: it may read, and roll back only when added with `--allow-rollback`. Every other
/// command, option or repository stays refused.
#[test]
fn the_pusher_reads_status_releases_and_log_and_rolls_back_only_with_a_key_that_may() {
    let setup = SshSetup::new("post-receive", CONFIG);
    let clone = setup.clone();
    let v1 = clone.commit_file("app.py", "1\n");
    git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]).success();
    let first = setup.root.join("current").canonicalize().unwrap();
    let first = first.file_name().unwrap().to_str().unwrap().to_string();
    let v2 = clone.commit_file("app.py", "2\n");
    git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]).success();

    let ats = |ssh: &str, args: &[&str]| {
        let mut cmd = command(&setup.public.bin, setup.public.path());
        cmd.args(args)
            .current_dir(&clone.dir)
            .env("GIT_SSH_COMMAND", ssh);
        run(&mut cmd, format!("ats-hook {}", args.join(" ")))
    };
    // Without `--remote`, the clone is not mistaken for a server.
    ats(&setup.ssh(), &["status"])
        .failure()
        .stderr_has("is a clone of your app, not the server's bare repository")
        .stderr_has("--remote staging");

    let status = ats(&setup.ssh(), &["status", "--remote", "staging"]);
    status.success().stdout_has(&v2[..7]);
    let status = ats(&setup.ssh(), &["status", "--remote", "staging", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    assert_eq!(status["live"]["commit"], v2.as_str());
    let releases = ats(&setup.ssh(), &["releases", "--remote", "staging", "--json"]);
    let releases: serde_json::Value = serde_json::from_str(&releases.success().stdout()).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 2, "{releases}");
    ats(&setup.ssh(), &["log", "--remote", "staging"])
        .success()
        .stdout_has(&v1[..7])
        .stdout_has(&v2[..7]);
    // One deploy's output, found by the start of its commit.
    ats(&setup.ssh(), &["log", &v1[..7], "--remote", "staging"])
        .success()
        .stdout_has(&format!("deployed {}", &v1[..7]));

    // This key may not roll back.
    ats(&setup.ssh(), &["rollback", "--remote", "staging"])
        .failure()
        .stderr_has("this key may not roll back: add it with `ats-hook keys add --allow-rollback`");
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/version.txt")).unwrap(),
        format!("{v2}\n")
    );

    // A second key, added with `--allow-rollback`, may.
    let (added, roller) = setup.add_key("release-manager", "--allow-rollback");
    added.success().stdout_has("and roll it back");
    let repo = setup.repo.to_str().unwrap();
    ats(&roller, &["rollback", "--remote", "staging"])
        .success()
        .stderr_has(&format!("release {first}, in "));
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/version.txt")).unwrap(),
        format!("{v1}\n")
    );
    let history = std::fs::read_to_string(setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(last["action"], "rollback");
    assert_eq!(last["pusher"], "release-manager");

    // What stays refused, with either key.
    let marker = setup.public.path().join("pwned");
    let other = setup.user.home.join("other.git");
    for request in [
        format!("ats-hook deploy --repo '{repo}'"),
        format!("ats-hook install --repo '{repo}'"),
        format!(
            "ats-hook status --repo '{repo}' --config {}",
            marker.display()
        ),
        format!("ats-hook status --repo '{}'", other.display()),
        format!("ats-hook status --repo '{repo}/../other.git'"),
        format!("ats-hook log ../../etc/passwd --repo '{repo}'"),
        format!("ats-hook status; touch {}", marker.display()),
        format!(
            "ats-hook status --repo '{repo}' && touch {}",
            marker.display()
        ),
        "ats-hook keys add --generate".to_string(),
        "ats-hook ssh-gate --repo /".to_string(),
    ] {
        setup
            .attempt(&[], Some(&request))
            .failure()
            .stderr_has("this deploy key may only push to or fetch from");
    }
    assert!(!marker.exists(), "a refused command ran");
}

/// Push options go through the SSH gate as git sent them: the note arrives byte for byte, and
/// a skip and a bad option act as they do on a local push.
#[test]
fn push_options_pass_through_the_ssh_gate_unchanged() {
    let config = format!("{CONFIG}skippable = true\n");
    let setup = SshSetup::new("post-receive", &config);
    let clone = setup.clone();
    let sha = clone.commit_file("app.py", "1\n");
    let note = "release 1.2 — $(touch /tmp/ats-hook-pwned) 'quoted' \"double\"";
    git_over_ssh(
        &clone,
        &setup.ssh(),
        &[
            "push",
            "-o",
            &format!("ats.note={note}"),
            "-o",
            "ats.skip=build",
            "staging",
            "main",
        ],
    )
    .success()
    .stderr_has("build: skipped, as the push asked")
    .stderr_has(&format!("remote: ats-hook: deployed {}", &sha[..7]));
    let history = std::fs::read_to_string(setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(record["note"], note);
    assert_eq!(record["steps"][0]["status"], "skipped");
    assert!(!setup.root.join("current/version.txt").exists());
    assert!(!Path::new("/tmp/ats-hook-pwned").exists());

    clone.commit_file("app.py", "2\n");
    git_over_ssh(
        &clone,
        &setup.ssh(),
        &["push", "-o", "ats.restart-please", "staging", "main"],
    )
    .stderr_has("nothing deployed: unknown push option `ats.restart-please`");
    let after = std::fs::read_to_string(setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    assert_eq!(
        after, history,
        "a push with a bad option deployed something"
    );
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/app.py")).unwrap(),
        "1\n"
    );
}
