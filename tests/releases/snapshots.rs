//! Releases as btrfs subvolumes: on a deploy root on btrfs, a push with no old release to reuse
//! builds from a snapshot of the live release, at once, with no spare prepared, holding its
//! commit exactly (what the app changed in the live release stays there); old releases are
//! pruned as subvolumes, by root and by a deploy user who may not delete subvolumes; a snapshot
//! that a killed run left is never used; `snapshot_releases = false` keeps plain folders.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use pretty_assertions::assert_eq;

use super::assert_release_is;
use crate::support::system::{Mount, User};
use crate::support::*;

/// A server whose deploy root is a btrfs of its own.
fn on_btrfs(config: &str) -> (Server, Mount) {
    let server = Server::new();
    let disk = Mount::btrfs_image(&server.path().join("btrfs.img"), &server.root, "300M");
    server.config(config);
    (server, disk)
}

fn is_subvolume(path: &std::path::Path) -> bool {
    std::fs::metadata(path).unwrap().ino() == 256
}

/// `btrfs ARGS`, which must succeed; what it printed.
fn btrfs(args: &[&std::ffi::OsStr]) -> String {
    let mut cmd = std::process::Command::new("btrfs");
    cmd.args(args);
    run(&mut cmd, "btrfs").success().stdout()
}

/// The subvolumes of the btrfs at `root`, as `btrfs subvolume list` names them.
fn subvolumes(root: &std::path::Path) -> Vec<String> {
    let listed = btrfs(&[
        "subvolume".as_ref(),
        "list".as_ref(),
        "-o".as_ref(),
        root.as_ref(),
    ]);
    let mut names = listed
        .lines()
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect::<Vec<_>>();
    names.sort();
    names
}

/// Release ids in name order (two deploys in one second sort by their commits).
fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

fn repo(server: &Server) -> git2::Repository {
    git2::Repository::open_bare(&server.bare).unwrap()
}

#[test]
fn a_new_servers_next_push_builds_from_a_snapshot_of_the_live_release() {
    let (server, _disk) = on_btrfs("[deploy]\nroot = \"ROOT\"\n");
    let clone = server.clone("work");
    for k in 0..300 {
        clone.write(&format!("d{}/f{k}.txt", k % 12), &format!("file {k}\n"));
    }
    server.ats(&["check"]).success().stdout_has(
        "building:  from the release pruning would remove next, else a snapshot of the live release (releases are btrfs subvolumes)",
    );
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success().stderr_has("checked out 301 files");
    let first = server.live().unwrap();
    assert!(is_subvolume(&server.root.join("releases").join(&first)));

    // Straight away, with nothing prepared in the background.
    clone.write("d3/f3.txt", "changed\n");
    std::fs::remove_file(clone.dir.join("d4/f4.txt")).unwrap();
    let v2 = clone.commit_file("app.py", "2\n");
    clone.push().success().stderr_has(&format!(
        "built from a snapshot of the live release {first}: 2 files written, 1 removed"
    ));
    let second = server.live().unwrap();
    assert_eq!(
        server.last_record()["built_from"],
        format!("snapshot of {first}").as_str()
    );
    let releases = server.root.join("releases");
    assert!(is_subvolume(&releases.join(&second)));
    assert_release_is(&repo(&server), &releases.join(&second), &v2, &[]);
    // The release it was taken from holds its own commit still.
    assert_release_is(&repo(&server), &releases.join(&first), &v1, &[]);
    // No spare is prepared where snapshots serve, and none is left behind.
    std::thread::sleep(Duration::from_millis(500));
    for leftover in [".spare", ".spare-new", ".snapshot"] {
        assert!(!releases.join(leftover).exists(), "{leftover}");
    }
    assert!(!server.root.join(".ats-hook/index/.snapshot").exists());
    assert_eq!(subvolumes(&server.root), sorted(&[first, second]));
}

#[test]
fn what_the_app_changed_in_the_live_release_stays_there_and_not_in_the_next() {
    let (server, _disk) = on_btrfs("[deploy]\nroot = \"ROOT\"\n");
    let clone = server.clone("work");
    clone.write("config.py", "DEBUG = False\n");
    clone.write("lib/util.py", "x = 1\n");
    clone.write("bin/run", "#!/bin/sh\n");
    clone.write("static/logo.svg", "<svg/>\n");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let first = server.live().unwrap();
    let live = server.root.join("releases").join(&first);
    // The running app (or someone by hand): edits a tracked file, writes caches and a stray
    // file, removes a tracked file, makes a file executable.
    std::fs::write(live.join("config.py"), "DEBUG = True\n").unwrap();
    std::fs::create_dir(live.join("lib/__pycache__")).unwrap();
    std::fs::write(live.join("lib/__pycache__/util.pyc"), "cached").unwrap();
    std::fs::write(live.join("stray.txt"), "x").unwrap();
    std::fs::remove_file(live.join("static/logo.svg")).unwrap();
    std::fs::set_permissions(live.join("lib/util.py"), PermissionsExt::from_mode(0o755)).unwrap();

    let v2 = clone.commit_file("app.py", "2\n");
    clone
        .push()
        .success()
        .stderr_has(&format!(
            "built from a snapshot of the live release {first}"
        ))
        .stderr_has("3 changed on disk and rewritten")
        .stderr_has("2 untracked removed");
    let second = server.live().unwrap();
    assert_release_is(
        &repo(&server),
        &server.root.join("releases").join(&second),
        &v2,
        &[],
    );
    // The release the snapshot was taken from is as the app left it.
    assert_eq!(
        std::fs::read_to_string(live.join("config.py")).unwrap(),
        "DEBUG = True\n"
    );
    assert!(live.join("lib/__pycache__/util.pyc").is_file());
    assert!(live.join("stray.txt").is_file());
    assert!(!live.join("static/logo.svg").exists());
    assert_eq!(
        std::fs::read_to_string(live.join("REVISION")).unwrap(),
        format!("{v1}\n")
    );
}

#[test]
fn old_releases_are_pruned_as_subvolumes_and_the_live_one_is_never_reused() {
    let (server, _disk) = on_btrfs("[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n");
    let clone = server.clone("work");
    let mut ids = Vec::new();
    for n in 0..4 {
        clone.commit_file("app.py", &format!("{n}\n"));
        clone.push().success();
        ids.push(server.live().unwrap());
    }
    // With two kept, the live release and its rollback target are all there is: each push
    // builds from a snapshot, and the release before the rollback target goes.
    let records = server.records();
    for (n, record) in records.iter().enumerate().skip(1) {
        assert_eq!(
            record["built_from"],
            format!("snapshot of {}", ids[n - 1]).as_str(),
            "{record}"
        );
    }
    assert_eq!(subvolumes(&server.root), sorted(&ids[2..]));
    assert_eq!(server.releases(), sorted(&ids[2..]));
}

#[test]
fn a_deploy_user_who_may_not_delete_subvolumes_prunes_them_all_the_same() {
    let user = User::create();
    let (server, _disk) = on_btrfs("[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n");
    // The repository and the deploy root are the user's, and so are the pushes: git's
    // receiving side, and the hook with it, run as the user.
    let bin = crate::support::system::Public::new();
    std::fs::remove_file(server.bare.join("hooks/post-receive")).unwrap();
    std::os::unix::fs::symlink(&bin.bin, server.bare.join("hooks/post-receive")).unwrap();
    std::os::unix::fs::chown(server.path(), Some(user.uid()), None).unwrap();
    std::os::unix::fs::chown(&server.root, Some(user.uid()), None).unwrap();
    run(
        std::process::Command::new("chown")
            .args(["-R", &user.name])
            .arg(&server.bare),
        "chown",
    )
    .success();
    user.sh(&format!(
        "git init -q -b main ~/work && cd ~/work && git remote add staging {}",
        server.bare.display()
    ))
    .success();
    let mut ids = Vec::new();
    let mut said = String::new();
    for n in 0..4 {
        let push = user.sh(&format!(
            "cd ~/work && echo {n} > app.py && git add -A && \
             git -c user.name=u -c user.email=u@example.com commit -qm {n} && \
             git push -q staging main 2>&1"
        ));
        said.push_str(&push.stdout());
        push.success();
        ids.push(server.live().unwrap());
    }
    // Deleting a subvolume takes root (or `user_subvol_rm_allowed`): the user's hook removes
    // the release file by file, and the empty subvolume with it.
    assert!(said.contains("built from a snapshot"), "{said}");
    assert!(
        said.contains(&format!("pruned 1 old release(s): {}", ids[1])),
        "{said}"
    );
    assert_eq!(subvolumes(&server.root), sorted(&ids[2..]));
    let live = server.root.join("releases").join(&ids[3]);
    assert_eq!(std::fs::metadata(&live).unwrap().uid(), user.uid());
}

#[test]
fn a_snapshot_left_by_a_killed_run_is_never_used() {
    let (server, _disk) = on_btrfs("[deploy]\nroot = \"ROOT\"\n");
    let clone = server.clone("work");
    clone.write("lib/util.py", "x = 1\n");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    // A run killed after its snapshot, with the snapshot half brought to another commit.
    let releases = server.root.join("releases");
    let live = releases.join(server.live().unwrap());
    btrfs(&[
        "subvolume".as_ref(),
        "snapshot".as_ref(),
        live.as_ref(),
        releases.join(".snapshot").as_ref(),
    ]);
    std::fs::write(releases.join(".snapshot/lib/util.py"), "x = 'half'\n").unwrap();
    std::fs::write(releases.join(".snapshot/left.txt"), "left").unwrap();

    let v2 = clone.commit_file("app.py", "2\n");
    clone
        .push()
        .success()
        .stderr_has("built from a snapshot of the live release");
    let second = releases.join(server.live().unwrap());
    assert_release_is(&repo(&server), &second, &v2, &[]);
    assert!(!releases.join(".snapshot").exists());
}

#[test]
fn with_snapshot_releases_off_releases_are_plain_folders_and_the_spare_serves() {
    let (server, _disk) = on_btrfs("[deploy]\nroot = \"ROOT\"\nsnapshot_releases = false\n");
    let clone = server.clone("work");
    let v1 = clone.commit_file("app.py", "1\n");
    clone.push().success();
    let first = server.live().unwrap();
    assert!(!is_subvolume(&server.root.join("releases").join(&first)));
    wait_for("the spare", Duration::from_secs(20), || {
        std::fs::read_to_string(server.root.join(".ats-hook/spare.json"))
            .is_ok_and(|s| s.contains(&v1))
    });
    clone.commit_file("app.py", "2\n");
    clone
        .push()
        .success()
        .stderr_has("built from the spare release")
        .stderr_lacks("snapshot");
    assert!(subvolumes(&server.root).is_empty());
}
