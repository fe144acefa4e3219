//! A new release built from an old one holds exactly its commit's tree, whatever the
//! history did, and starts from its commit alone.

use crate::support::rng::Rng;
use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::PathBuf;

use super::*;

#[test]
fn every_release_equals_its_commit_through_a_random_history() {
    let server = Server::new();
    let built_from = random_history(&server, 3);
    let recycled = built_from.iter().filter(|b| b.is_some()).count();
    assert!(
        recycled >= 25,
        "only {recycled} of 30 deploys were built from an old release"
    );
}

/// The same history on a btrfs, with releases kept long enough that each is built from a
/// snapshot of the live one: the snapshots hold each commit exactly too.
#[test]
fn every_release_built_from_a_snapshot_equals_its_commit_through_a_random_history() {
    let server = Server::new();
    let _disk = crate::support::system::Mount::btrfs_image(
        &server.path().join("btrfs.img"),
        &server.root,
        "300M",
    );
    let built_from = random_history(&server, 40);
    let snapshots = built_from
        .iter()
        .filter(|b| b.as_deref().is_some_and(|b| b.starts_with("snapshot of ")))
        .count();
    assert_eq!(snapshots, 30, "{built_from:?}");
}

/// Thirty deploys of random changes (adds, deletes, renames, modes, symlinks, files turned into
/// folders and back) with a shared path and a step writing into the release, each checked: the
/// live release and the rollback target untouched by the next deploy, every release on disk
/// its commit exactly. Returns what each deploy was built from.
fn random_history(server: &Server, keep: usize) -> Vec<Option<String>> {
    let seed: u64 = std::env::var("ATS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_ba5e);
    println!("seed {seed} (ATS_TEST_SEED replays it)");
    let mut rng = Rng(seed);
    server.config(&format!(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = {keep}\n[shared]\npaths = [\"log\"]\n\
         [[step]]\nname = \"build\"\nrun = \"mkdir -p build && date +%s%N > build/out.txt\"\n",
    ));
    let clone = server.clone("work");
    clone.write("README", "start\n");
    clone.write("log/.gitkeep", "");
    clone.commit("start");
    clone.push().success();
    let repo = git2::Repository::open_bare(&server.bare).unwrap();

    let mut built_from = Vec::new();
    for n in 0..30 {
        for op in 0..rng.below(5) + 1 {
            mutate(&mut rng, &clone.dir, n * 10 + op);
        }
        clone.commit(&format!("change {n}"));
        // What is live, and where a rollback would go, must come through this deploy untouched.
        let records = server.records();
        let live = server.live().unwrap();
        let rollback = records
            .iter()
            .rev()
            .map(|r| r["release"].as_str().unwrap().to_string())
            .find(|id| *id != live && server.releases().contains(id));
        let before: Vec<(PathBuf, _)> = [Some(live.clone()), rollback]
            .into_iter()
            .flatten()
            .map(|id| {
                let dir = server.root.join("releases").join(id);
                let snap = snapshot(&dir);
                (dir, snap)
            })
            .collect();

        clone.push().success().stderr_has("ats-hook: deployed");

        for (dir, snap) in &before {
            assert_eq!(
                &snapshot(dir),
                snap,
                "{} was touched by deploy {n}",
                dir.display()
            );
        }
        let record = server.last_record();
        built_from.push(record["built_from"].as_str().map(str::to_string));
        for id in server.releases() {
            let made = server
                .records()
                .into_iter()
                .rev()
                .find(|r| r["release"] == id.as_str() && r["action"] == "deploy")
                .unwrap();
            let dir = server.root.join("releases").join(&id);
            assert_release_is(
                &repo,
                &dir,
                made["commit"].as_str().unwrap(),
                &["log", "build/out.txt"],
            );
            assert!(
                std::fs::read_link(dir.join("log")).is_ok(),
                "{id} lost its shared link"
            );
        }
    }
    built_from
}

#[test]
fn a_reused_release_starts_from_its_commit_alone() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n\
         [[step]]\nname = \"build\"\nrun = \"test -e build/first || { mkdir -p build; echo $ATS_COMMIT > build/first; }\"\n",
    );
    let clone = server.clone("work");
    let first = clone.commit_file("a", "0");
    clone.push().success();
    for n in 1..4 {
        clone.commit_file("a", &n.to_string());
        clone.push().success();
    }
    let last = server.last_record();
    assert!(last["built_from"].is_string(), "{last}");
    assert_ne!(server.live_file("build/first").trim(), first);
    assert_eq!(server.live_file("build/first").trim(), clone.head());
}

#[test]
fn a_tracked_file_changed_on_disk_is_rewritten_when_its_release_is_reused() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    clone.write("config.py", "DEBUG = False\n");
    clone.commit_file("app.py", "0\n");
    clone.push().success();
    let oldest = server.live().unwrap();
    // Someone edits a file of an old release by hand.
    std::fs::write(
        server.root.join("releases").join(&oldest).join("config.py"),
        "DEBUG = True\n",
    )
    .unwrap();
    for n in 1..4 {
        clone.commit_file("app.py", &format!("{n}\n"));
        let push = clone.push();
        push.success();
        if n == 3 {
            push.stderr_has(&format!("built from old release {oldest}"))
                .stderr_has("1 changed on disk and rewritten");
        }
    }
    assert_eq!(server.live_file("config.py"), "DEBUG = False\n");
}

#[test]
fn a_whole_checkout_of_many_files_equals_its_commit_and_its_index_holds_each_file() {
    // Past 256 entries a whole checkout spreads its small files over writer threads; large
    // files, symlinks and the executable bit go their own ways.
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    let mut rng = Rng(0x000f_11e5);
    for folder in 0..40 {
        for n in 0..30 {
            let path = format!("app/m{folder}/f{n}.py");
            let len = rng.below(3_000);
            clone.write(&path, &format!("{folder} {n} ").repeat(len / 4 + 1)[..len]);
        }
    }
    for n in 0..3 {
        clone.write(&format!("static/big{n}.bin"), &"b".repeat(200_000 + n));
    }
    clone.write("bin/run", "#!/bin/sh\necho run\n");
    let run = clone.dir.join("bin/run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../app/m3/f7.py", clone.dir.join("bin/link")).unwrap();
    std::os::unix::fs::symlink("nowhere", clone.dir.join("app/dangling")).unwrap();
    let first = clone.commit("a tree of 1,200 small files");
    clone.push().success().stderr_has("checked out 1206 files");
    let repo = git2::Repository::open_bare(&server.bare).unwrap();
    let live = server.root.join("releases").join(server.live().unwrap());
    assert_release_is(&repo, &live, &first, &[]);

    // The next push is built from a whole checkout too (the spare's), and trusts its index:
    // only the changed file is written, none is found changed on disk.
    clone.write("app/m39/f29.py", "changed\n");
    let second = clone.commit("one file");
    clone
        .push()
        .success()
        .stderr_has("built from the spare release")
        .stderr_has("1 file written, 0 removed in")
        .stderr_lacks("changed on disk");
    let live = server.root.join("releases").join(server.live().unwrap());
    assert_release_is(&repo, &live, &second, &[]);
}
