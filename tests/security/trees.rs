//! Trees that git itself never writes, pushed as raw objects: a symlink and a folder of the
//! same name would let a checkout write through the symlink, anywhere the deploy user may.

use std::io::Write;
use std::process::Stdio;

use crate::support::*;

/// `git ARGS` in the clone with `input` on stdin; what it printed, trimmed.
fn git_with_input(clone: &Clone, args: &[&str], input: &[u8]) -> String {
    let mut child = command("git", clone.dir.parent().unwrap())
        .args(args)
        .current_dir(&clone.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {}", args.join(" "));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Writes a tree object from raw entries `(mode, name, id)`, in the order given, with no check
/// (as `git hash-object -t tree --literally` does); returns its id.
fn raw_tree(clone: &Clone, entries: &[(&str, &str, &str)]) -> String {
    let mut bytes = Vec::new();
    for (mode, name, id) in entries {
        bytes.extend_from_slice(format!("{mode} {name}\0").as_bytes());
        let raw: Vec<u8> = (0..id.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&id[i..i + 2], 16).unwrap())
            .collect();
        bytes.extend_from_slice(&raw);
    }
    git_with_input(
        clone,
        &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"],
        &bytes,
    )
}

fn blob(clone: &Clone, content: &str) -> String {
    git_with_input(clone, &["hash-object", "-w", "--stdin"], content.as_bytes())
}

/// Makes `tree` the clone's next commit on `main`.
fn commit_tree(clone: &Clone, tree: &str, message: &str) -> String {
    let parent = clone.head();
    let commit = clone
        .git(&["commit-tree", tree, "-p", &parent, "-m", message])
        .success()
        .stdout()
        .trim()
        .to_string();
    clone
        .git(&["update-ref", "refs/heads/main", &commit])
        .success();
    commit
}

/// The tree of the review: `a -> <bare>/hooks` and a folder `a/` holding `pre-receive`.
fn hooks_through_a_symlink(server: &Server, clone: &Clone, marker: &std::path::Path) -> String {
    let hook = blob(
        clone,
        &format!("#!/bin/sh\ntouch {}\n", marker.to_str().unwrap()),
    );
    let folder = raw_tree(clone, &[("100755", "pre-receive", &hook)]);
    let link = blob(clone, server.bare.join("hooks").to_str().unwrap());
    let readme = blob(clone, "hello\n");
    // In git's order a file `a` sorts before a folder `a` (`a\0` < `a/`): only the name is twice.
    raw_tree(
        clone,
        &[
            ("120000", "a", &link),
            ("40000", "a", &folder),
            ("100644", "readme", &readme),
        ],
    )
}

#[test]
fn a_tree_with_a_symlink_and_a_folder_of_one_name_writes_nothing_through_the_link() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("readme", "first\n");
    clone.push().success();
    let live = server.live().unwrap();

    let marker = server.path().join("hook-ran");
    let tree = hooks_through_a_symlink(&server, &clone, &marker);
    commit_tree(&clone, &tree, "a hook through a symlink");
    // The refs are stored (git's own checks are off here): the deploy fails, the pusher told.
    clone
        .push()
        .stderr_has("the commit's tree holds `a` twice; refusing to check it out");
    assert!(
        !server.bare.join("hooks/pre-receive").exists(),
        "the tree wrote a hook into the bare repository"
    );
    assert_eq!(server.live().as_deref(), Some(live.as_str()));

    // The spare, the next push's release built from the last one, and the push itself: no hook.
    clone
        .git(&["reset", "--quiet", "--hard", "HEAD~1"])
        .success();
    clone.commit_file("readme", "third\n");
    clone.push_args(&["--force", "main"]).success();
    assert!(!server.bare.join("hooks/pre-receive").exists());
    assert!(!marker.exists(), "a hook the tree wrote ran");
    assert_eq!(server.live_file("readme"), "third\n");
}

#[test]
fn a_tree_out_of_git_order_is_refused() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("readme", "first\n");
    clone.push().success();
    let (one, two) = (blob(&clone, "1\n"), blob(&clone, "2\n"));
    let tree = raw_tree(&clone, &[("100644", "b", &two), ("100644", "a", &one)]);
    commit_tree(&clone, &tree, "out of order");
    clone
        .push()
        .stderr_has("deploy FAILED")
        .stderr_has("the commit's tree lists `a` out of git's order");
    assert_eq!(server.live_file("readme"), "first\n");
}

#[test]
fn install_has_git_refuse_such_trees_at_the_door() {
    let public = crate::support::system::Public::new();
    let repo = public.path().join("srv/app.git");
    public
        .ats(&["install", "--repo", repo.to_str().unwrap()])
        .success();
    let fsck = command("git", public.path())
        .args(["config", "--get", "receive.fsckObjects"])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fsck.stdout).trim(), "true");

    let clone = Clone::new_in(public.path(), "work");
    clone.commit_file("readme", "first\n");
    clone
        .git(&["remote", "add", "staging", repo.to_str().unwrap()])
        .success();
    let marker = public.path().join("hook-ran");
    let link = blob(&clone, repo.join("hooks").to_str().unwrap());
    let hook = blob(&clone, &format!("#!/bin/sh\ntouch {}\n", marker.display()));
    let folder = raw_tree(&clone, &[("100755", "pre-receive", &hook)]);
    let tree = raw_tree(&clone, &[("120000", "a", &link), ("40000", "a", &folder)]);
    commit_tree(&clone, &tree, "a hook through a symlink");
    clone.push().failure().stderr_has("duplicateEntries");
    assert!(!repo.join("hooks/pre-receive").exists());
}
