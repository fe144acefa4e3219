//! Git LFS over SSH with the real `git lfs` client, through real sshd and the deploy key's
//! gate, which ats-hook serves itself (git-lfs's SSH transfer protocol): objects arrive checked
//! in the repository's LFS store, releases hold the real files, a read-only key fetches them
//! but sends none, a pointer without its object fails the deploy.

use crate::support::rng::Rng;
use crate::support::system::SshSetup;
use crate::support::*;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;

use super::*;

/// `git lfs` on the client, which tests/run installs (Debian's `git-lfs`).
fn lfs_clone(setup: &SshSetup) -> Clone {
    let clone = setup.clone();
    clone.git(&["lfs", "install", "--local"]).success();
    clone.git(&["lfs", "track", "*.bin"]).success();
    clone
}

/// Five megabytes that compress to nothing less.
fn big_binary(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..5 << 20).map(|_| rng.next() as u8).collect()
}

fn oid(content: &[u8]) -> String {
    format!("{:x}", Sha256::digest(content))
}

/// A clone of the server's repository with `ssh`, its large files fetched by `git lfs pull`.
fn lfs_fetch(setup: &SshSetup, ssh: &str, name: &str) -> Clone {
    let mut clone = command("git", setup.public.path());
    clone
        .args(["clone", "--quiet", &setup.url, name])
        .current_dir(setup.public.path())
        .env("GIT_SSH_COMMAND", ssh);
    run(&mut clone, "git clone").success();
    let fetched = Clone {
        dir: setup.public.path().join(name),
        home: setup.public.path().to_path_buf(),
    };
    fetched.git(&["lfs", "install", "--local"]).success();
    git_over_ssh(&fetched, ssh, &["lfs", "pull"]).success();
    fetched
}

fn store_object(setup: &SshSetup, oid: &str) -> std::path::PathBuf {
    setup
        .repo
        .join("lfs/objects")
        .join(&oid[..2])
        .join(&oid[2..4])
        .join(oid)
}

#[test]
fn lfs_objects_go_over_ssh_and_releases_hold_the_real_files() {
    let setup = SshSetup::new("pre-receive", CONFIG);
    let clone = lfs_clone(&setup);
    let content = big_binary(7);
    std::fs::create_dir_all(clone.dir.join("assets")).unwrap();
    std::fs::write(clone.dir.join("assets/big.bin"), &content).unwrap();
    clone.write("app.py", "print('v1')\n");
    let first = clone.commit("a large file");
    // What git holds is the pointer.
    let pointer = clone.git(&["show", "HEAD:assets/big.bin"]).stdout();
    assert!(
        pointer.starts_with("version https://git-lfs.github.com/spec/v1"),
        "{pointer}"
    );

    let push = git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]);
    push.success()
        .stderr_has("git lfs: 1 file (5.2 MB) written from the LFS store")
        .stderr_has(&format!("remote: ats-hook: deployed {}", &first[..7]));
    // Kept once in the repository's store, read-only, checked by its hash.
    let id = oid(&content);
    let kept = store_object(&setup, &id);
    assert_eq!(oid(&std::fs::read(&kept).unwrap()), id);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o444
    );
    // The release holds the file itself, by content.
    let released = std::fs::read(setup.root.join("current/assets/big.bin")).unwrap();
    assert_eq!(oid(&released), id);

    // A push that leaves it alone does not write it again.
    clone.write("app.py", "print('v2')\n");
    let second = clone.commit("code only");
    let push = git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]);
    push.success()
        .stderr_lacks("git lfs:")
        .stderr_has(&format!("remote: ats-hook: deployed {}", &second[..7]));
    let released = std::fs::read(setup.root.join("current/assets/big.bin")).unwrap();
    assert_eq!(oid(&released), id);

    // A fresh clone with the same key fetches the object through the gate.
    let fetched = lfs_fetch(&setup, &setup.ssh(), "fetched");
    assert_eq!(
        oid(&std::fs::read(fetched.dir.join("assets/big.bin")).unwrap()),
        id
    );
}

#[test]
fn a_read_only_key_fetches_lfs_objects_and_can_send_none() {
    let setup = SshSetup::new("post-receive", CONFIG);
    let clone = lfs_clone(&setup);
    let content = big_binary(11);
    std::fs::write(clone.dir.join("big.bin"), &content).unwrap();
    clone.commit("a large file");
    git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]).success();

    // A second key, read-only.
    let (added, reader_ssh) = setup.add_key("ci-reader", "--read-only");
    added.success().stdout_has("it can fetch from");
    let repo = setup.repo.to_str().unwrap();
    setup
        .public
        .ats(&["keys", "list", "--repo", repo, "--user", &setup.user.name])
        .success()
        .stdout_has("ci-reader ssh-ed25519 (read-only)");

    // It fetches, large files included.
    let reader = lfs_fetch(&setup, &reader_ssh, "reader");
    assert_eq!(
        oid(&std::fs::read(reader.dir.join("big.bin")).unwrap()),
        oid(&content)
    );

    // It sends no object, and no push.
    let other = big_binary(12);
    std::fs::write(reader.dir.join("other.bin"), &other).unwrap();
    reader.commit("another large file");
    let mut lfs_push = command("git", &reader.dir);
    lfs_push
        .args(["lfs", "push", "--all", "origin"])
        .current_dir(&reader.dir)
        .env("GIT_SSH_COMMAND", &reader_ssh);
    run(&mut lfs_push, "git lfs push")
        .failure()
        .stderr_has("this key may only fetch (it was added with `--read-only`)");
    assert!(!store_object(&setup, &oid(&other)).exists());
    git_over_ssh(
        &reader,
        &reader_ssh,
        &["push", "--no-verify", "origin", "main"],
    )
    .failure()
    .stderr_has("this key may only fetch (it was added with `--read-only`)");
    assert!(setup.root.join("current/big.bin").exists());
    assert!(!setup.root.join("current/other.bin").exists());
}

/// The pointer arrives (a push that skipped `git lfs`'s pre-push hook), its object does not:
/// the deploy fails naming the file, and what was live stays live.
#[test]
fn a_pointer_whose_object_never_arrived_fails_the_deploy_naming_it() {
    let setup = SshSetup::new("post-receive", CONFIG);
    let clone = lfs_clone(&setup);
    clone.write("app.py", "print('v1')\n");
    let first = clone.commit("no large file yet");
    git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]).success();
    std::fs::create_dir_all(clone.dir.join("media")).unwrap();
    std::fs::write(clone.dir.join("media/video.bin"), big_binary(3)).unwrap();
    clone.commit("a large file, pushed without its object");
    git_over_ssh(
        &clone,
        &setup.ssh(),
        &["push", "--no-verify", "staging", "main"],
    )
    .success()
    .stderr_has("`media/video.bin` is a Git LFS pointer to an object the server does not have")
    .stderr_has("git lfs push --all")
    .stderr_has(&format!("deploy FAILED; {} is still live", &first[..7]));
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/version.txt"))
            .unwrap()
            .trim(),
        first
    );
}
