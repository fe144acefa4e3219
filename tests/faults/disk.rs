//! A full disk (a small filesystem mounted for the test) during a step, the checkout or the
//! history append: the live release stays and the pusher reads why.

use crate::support::*;
use pretty_assertions::assert_eq;

use crate::support::system::Mount;

#[test]
fn a_full_disk_during_a_step_or_the_checkout_leaves_the_live_release_and_says_why() {
    let server = Server::new();
    let _disk = Mount::tmpfs(&server.root, "6m");
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n\
         [[step]]\nname = \"build\"\nrun = \"test ! -e fill-disk || head -c 20000000 /dev/zero > filler\"\n",
    );
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live().unwrap();

    // A step that fills the disk: it fails, the pusher is told the disk is full, the history
    // can not even take the record.
    clone.write("fill-disk", "");
    clone.commit_file("app.py", "2\n");
    let push = clone.push();
    push.success()
        .stderr_has("No space left on device")
        .stderr_has("is full (")
        .stderr_has("free some space (`df -h` shows where), then push again");
    assert_eq!(server.live(), Some(live.clone()));
    assert_eq!(server.live_file("app.py"), "1\n");
    let status = server.ats(&["status"]);
    status
        .success()
        .stdout_has(&format!("live:        {live} ({} of main)", &v1[..7]));

    // Space freed (the failed release's filler goes), the next push deploys.
    let failed = server.releases().into_iter().find(|r| *r != live).unwrap();
    std::fs::remove_file(server.root.join("releases").join(&failed).join("filler")).unwrap();
    std::fs::remove_file(clone.dir.join("fill-disk")).unwrap();
    let v3 = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    let live = server.live().unwrap();

    // A commit too large for the disk: the checkout fails, saying why; the live release stays.
    let big: String = "x".repeat(8_000_000);
    clone.commit_file("assets/big.bin", &big);
    let push = clone.push();
    push.success()
        .stderr_has("No space left on device")
        .stderr_has("a disk is full: free some space (`df -h` shows where), then push again")
        .stderr_has(&format!("deploy FAILED; {} is still live", &v3[..7]));
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.live_file("app.py"), "3\n");

    // Without it, the next push deploys, and the history reads whole.
    clone.git(&["rm", "-q", "assets/big.bin"]).success();
    let v5 = clone.commit("the asset goes to a CDN");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v5[..7]));
    let log = server.ats(&["log", "--json"]);
    log.success();
    let history: serde_json::Value = serde_json::from_str(&log.stdout()).unwrap();
    let states: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"succeeded"));
    assert_eq!(states.last(), Some(&"succeeded"));
    assert!(states.contains(&"failed"), "{states:?}");
}

#[test]
fn a_full_disk_at_the_history_append_is_said_and_the_next_push_records_what_happened() {
    let server = Server::new();
    let _disk = Mount::tmpfs(&server.root, "4m");
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n\
         [[step]]\nname = \"build\"\nrun = \"test ! -e fill-disk || head -c 20000000 /dev/zero > \\\"$ATS_DEPLOY_ROOT/filler\\\" || true\"\n",
    );
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live().unwrap();
    // Blank lines, which readers skip, bring the history to a page boundary: its next record
    // needs a new page of the full disk, as a record on a real server eventually does.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let len = std::fs::metadata(&history).unwrap().len() as usize;
    let mut padded = std::fs::read(&history).unwrap();
    padded.resize(len.div_ceil(4096) * 4096, b'\n');
    std::fs::write(&history, padded).unwrap();

    // The step fills the disk and succeeds; the deploy goes on, but its record cannot be
    // written: the pusher is told, and the switch it announced was never made.
    clone.write("fill-disk", "");
    clone.commit_file("app.py", "2\n");
    let push = clone.push();
    push.success()
        .stderr_has("a disk is full: free some space (`df -h` shows where), then push again")
        .stderr_has("the history could not record this deploy, so the next run will")
        .stderr_has("failed to append to history");
    // The pusher still reads how it ended, and the first cause.
    assert_eq!(
        push.summary(),
        format!("ats-hook: deploy FAILED; {} is still live", &v1[..7])
    );
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.live_file("app.py"), "1\n");
    server
        .ats(&["status"])
        .success()
        .stdout_has(&format!("({} of main)", &v1[..7]));

    // Space freed: the next push records the one that could not, and deploys.
    std::fs::remove_file(server.root.join("filler")).unwrap();
    std::fs::remove_file(clone.dir.join("fill-disk")).unwrap();
    let v3 = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has("ended (failed) but the history could not record it then; recording it now")
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    let log = server.ats(&["log", "--json"]);
    let history: serde_json::Value = serde_json::from_str(&log.success().stdout()).unwrap();
    let states: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    // The record says what happened, not that the process died.
    assert_eq!(states, ["succeeded", "failed", "succeeded"]);
    assert!(history[1]["error"]
        .as_str()
        .unwrap()
        .contains("failed to append to history"));
}

#[test]
fn a_full_disk_while_many_files_are_written_at_once_says_why_and_keeps_the_live_release() {
    // Hundreds of small files are written by several threads at once: the first failure stops
    // them all and is the one the pusher reads.
    let server = Server::new();
    let _disk = Mount::tmpfs(&server.root, "4m");
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\nrecycle_releases = false\n");
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live().unwrap();

    for n in 0..600 {
        clone.write(&format!("assets/m{}/f{n}.txt", n % 20), &"a".repeat(10_000));
    }
    clone.commit("600 assets");
    let push = clone.push();
    push.success()
        .stderr_has("No space left on device")
        .stderr_has("a disk is full: free some space (`df -h` shows where), then push again")
        .stderr_has(&format!("deploy FAILED; {} is still live", &v1[..7]));
    assert_eq!(server.live(), Some(live.clone()));
    assert_eq!(server.live_file("app.py"), "1\n");
    // The half-written release is gone, and its space with it.
    assert_eq!(server.releases(), vec![live]);

    clone.git(&["rm", "-q", "-r", "assets"]).success();
    let v3 = clone.commit("the assets go to a CDN");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    assert_eq!(server.live_file("app.py"), "1\n");
}
