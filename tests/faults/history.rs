//! A history cut mid-line or holding damaged bytes, and damaged state of the deploy root:
//! named with a way out, losing no later deploy, stopping no command.

use crate::support::*;
use pretty_assertions::assert_eq;

#[test]
fn a_torn_last_line_of_the_history_loses_no_later_deploy() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    clone.commit_file("app.py", "2\n");
    clone.push().success();
    // A power loss during the last append: the record is cut mid-line.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let text = std::fs::read(&history).unwrap();
    let whole = text.iter().filter(|&&b| b == b'\n').count();
    std::fs::write(&history, &text[..text.len() - 40]).unwrap();

    let v3 = clone.commit_file("app.py", "3\n");
    let push = clone.push();
    push.success()
        .stderr_has(&format!(
            "skipped 1 damaged line that did not parse (line {whole})"
        ))
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The torn line stands alone; v3's records of its switch and of its end follow it.
    assert_eq!(lines.len(), whole + 2, "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(lines[whole - 1]).is_err());
    let last: serde_json::Value = serde_json::from_str(lines[whole + 1]).unwrap();
    assert_eq!(last["commit"], v3.as_str());
    assert_eq!(last["state"], "succeeded");

    // What people read: the live release is known, and the last deploy is the new one.
    let releases: serde_json::Value =
        serde_json::from_str(&server.ats(&["releases", "--json"]).stdout()).unwrap();
    let live = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["live"] == true)
        .unwrap();
    assert_eq!(live["state"], "succeeded");
    assert_eq!(live["commit"], v3.as_str());
    server
        .ats(&["status"])
        .success()
        .stdout_has(&format!(
            "last deploy: {} succeeded",
            last["id"].as_str().unwrap()
        ))
        .stderr_has("skipped 1 damaged line");
    // And the next deploy appends cleanly.
    clone.commit_file("app.py", "4\n");
    clone.push().success();
    let text = std::fs::read_to_string(&history).unwrap();
    assert_eq!(text.lines().count(), whole + 4);
    assert!(text.ends_with("}\n"));
}

#[test]
fn damaged_state_is_named_with_a_way_out_and_a_redeploy_repairs_it() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    clone.commit_file("app.py", "2\n");
    clone.push().success();

    // The live release's folder deleted: `status` says so and how to mend it; a push does.
    let live = server.live().unwrap();
    std::fs::remove_dir_all(server.root.join("releases").join(&live)).unwrap();
    server
        .ats(&["status"])
        .success()
        .stdout_has("its folder is gone: push again or run `ats-hook deploy` to replace it");
    let v3 = clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has(&format!(
            "`current` points at release {live}, whose folder is gone"
        ))
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    assert_eq!(server.live_file("app.py"), "3\n");

    // `current` pointing at nothing at all: the same.
    std::fs::remove_file(server.root.join("current")).unwrap();
    std::os::unix::fs::symlink("releases/nothing", server.root.join("current")).unwrap();
    let v4 = clone.commit_file("app.py", "4\n");
    clone
        .push()
        .success()
        .stderr_has("`current` points at release nothing, whose folder is gone")
        .stderr_has(&format!("ats-hook: deployed {}", &v4[..7]));

    // The lock path is a folder: named, with the way out; nothing changes.
    let lock = server.root.join(".ats-hook/lock");
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&lock).unwrap();
    let live = server.live();
    clone.commit_file("app.py", "5\n");
    clone.push().success().stderr_has(&format!(
        "the lock file `{}` is a folder: remove it (`rmdir {}`)",
        lock.display(),
        lock.display()
    ));
    assert_eq!(server.live(), live);
    std::fs::remove_dir(&lock).unwrap();
    let v6 = clone.commit_file("app.py", "6\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v6[..7]));

    // Every kept index lost: releases are checked out whole again, as whole as before.
    for entry in std::fs::read_dir(server.root.join(".ats-hook/index")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for n in 7..10 {
        clone.commit_file("app.py", &format!("{n}\n"));
        let push = clone.push();
        push.success().stderr_lacks("built from old release");
        assert_eq!(server.live_file("app.py"), format!("{n}\n"));
    }
    clone.commit_file("app.py", "10\n");
    clone.push().success().stderr_has("built from old release");
    assert_eq!(server.live_file("app.py"), "10\n");
}

#[test]
fn damaged_bytes_in_the_history_or_the_lock_file_stop_no_command() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    // Bytes that are not UTF-8, and a record whose commit is not a sha at all.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let mut text = std::fs::read(&history).unwrap();
    text.extend_from_slice(b"\xff\xfe not a record\n");
    let last = server.last_record();
    let mut odd = last.clone();
    odd["id"] = "20261122T000000Z-odd".into();
    odd["release"] = "20261122T000000Z-odd".into();
    odd["commit"] = "🙂🙂🙂🙂🙂🙂🙂🙂".into();
    text.extend_from_slice(format!("{odd}\n").as_bytes());
    std::fs::write(&history, text).unwrap();
    for args in [
        &["status"][..],
        &["log"],
        &["releases"],
        &["status", "--json"],
    ] {
        server
            .ats(args)
            .success()
            .stderr_has("skipped 1 damaged line that did not parse");
    }
    server.ats(&["log"]).success().stdout_has("🙂🙂🙂🙂🙂🙂🙂");

    // A lock file left by a dead holder whose commit is not a sha either.
    std::fs::write(
        server.root.join(".ats-hook/lock"),
        r#"{"pid":999999,"commit":"🙂🙂🙂🙂🙂🙂🙂🙂","git_ref":"refs/heads/main","release":"","since":"2026-11-22T00:00:00Z","pusher":"someone"}"#,
    )
    .unwrap();
    let v2 = clone.commit_file("app.py", "2\n");
    clone
        .push()
        .success()
        .stderr_has("(deploying 🙂🙂🙂🙂🙂🙂🙂 of `refs/heads/main`")
        .stderr_has(&format!("ats-hook: deployed {}", &v2[..7]));
}
