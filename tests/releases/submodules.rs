//! Submodules in real repositories (bare repositories beside the server's, named by relative
//! and absolute paths in `.gitmodules`): checked out into each release at the recorded commit,
//! recursively, fetched into caches only when new, and followed by releases built from old
//! ones; a commit that cannot be fetched fails the deploy before the switch.

use std::path::{Path, PathBuf};

use pretty_assertions::assert_eq;

use crate::support::*;

/// lib.git's own `.gitmodules`, as `set_submodule` writes it.
const INNER: &str = "[submodule \"deps/inner\"]\n\tpath = deps/inner\n\turl = ../inner.git\n";

const CONFIG: &str = "[deploy]\nroot = \"ROOT\"\nsubmodules = true\nkeep_releases = 3\n";

/// `config` letting submodules come from the repositories beside the server's (and only
/// those: `.gitmodules` is the pusher's to write).
fn allowing(server: &Server, config: &str) -> String {
    config.replacen(
        "[deploy]\n",
        &format!(
            "[deploy]\nsubmodule_urls = [\"{}/\"]\n",
            server.path().display()
        ),
        1,
    )
}

/// A repository `<name>.git` beside the server's, and the clone that pushes to it.
fn library(server: &Server, name: &str) -> (PathBuf, Clone) {
    let bare = server.path().join(format!("{name}.git"));
    let mut cmd = command("git", server.path());
    cmd.args(["init", "--quiet", "--bare", "-b", "main"])
        .arg(&bare);
    run(&mut cmd, "git init --bare").success();
    let clone = Clone::new_in(server.path(), &format!("{name}-work"));
    clone
        .git(&["remote", "add", "origin", bare.to_str().unwrap()])
        .success();
    (bare, clone)
}

fn publish(clone: &Clone) -> String {
    clone.git(&["push", "--quiet", "origin", "main"]).success();
    clone.head()
}

/// Every file under `dir`, relative, with its content.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn submodules_are_checked_out_recursively_and_follow_their_commits() {
    let server = Server::new();
    server.config(&allowing(&server, CONFIG));
    // inner.git, nested in lib.git by a URL relative to lib.git's own.
    let (_, inner) = library(&server, "inner");
    inner.commit_file("inner.txt", "inner 1\n");
    let inner_1 = publish(&inner);
    let (lib_bare, lib) = library(&server, "lib");
    lib.write("lib.py", "version = 1\n");
    lib.write("old.py", "gone soon\n");
    lib.set_submodule("deps/inner", "../inner.git", &inner_1);
    lib.commit("lib 1");
    let lib_1 = publish(&lib);

    // The app names lib.git relative to the server's repository.
    let clone = server.clone("work");
    clone.write("app.py", "app\n");
    clone.set_submodule("vendor/lib", "../lib.git", &lib_1);
    clone.commit("app with lib");
    clone
        .push()
        .success()
        .stderr_has(&format!("submodule `vendor/lib`: fetching {}", &lib_1[..7]))
        .stderr_has(&format!(
            "submodule `vendor/lib/deps/inner`: fetching {}",
            &inner_1[..7]
        ))
        .stderr_lacks("left empty");
    let live = server.root.join("current");
    assert_eq!(
        files(&live.join("vendor/lib")),
        [
            (".gitmodules".to_string(), INNER.to_string()),
            ("deps/inner/inner.txt".to_string(), "inner 1\n".to_string()),
            ("lib.py".to_string(), "version = 1\n".to_string()),
            ("old.py".to_string(), "gone soon\n".to_string()),
        ]
    );
    assert!(
        server
            .root
            .join(".ats-hook/submodules")
            .read_dir()
            .unwrap()
            .count()
            == 2
    );

    // The app alone changes: nothing is fetched.
    clone.commit_file("app.py", "app 2\n");
    clone.push().success().stderr_lacks("fetching");
    assert_eq!(server.live_file("vendor/lib/lib.py"), "version = 1\n");

    // lib moves on: a file changes, one goes, one comes; the nested one moves too.
    inner.commit_file("inner.txt", "inner 2\n");
    let inner_2 = publish(&inner);
    lib.write("lib.py", "version = 2\n");
    lib.git(&["rm", "-q", "old.py"]).success();
    lib.write("new.py", "new\n");
    lib.set_submodule("deps/inner", "../inner.git", &inner_2);
    lib.commit("lib 2");
    let lib_2 = publish(&lib);
    clone.set_submodule("vendor/lib", "../lib.git", &lib_2);
    clone.commit("lib 2");
    for _ in 0..4 {
        // Enough pushes that releases are built from old ones, each crossing the change.
        clone.commit_file("app.py", &format!("{}\n", clone.head()));
        clone.push().success();
    }
    let push = clone.push_args(&["main"]);
    push.success();
    assert!(server.last_record()["built_from"].is_string());
    let expected = [
        (".gitmodules".to_string(), INNER.to_string()),
        ("deps/inner/inner.txt".to_string(), "inner 2\n".to_string()),
        ("lib.py".to_string(), "version = 2\n".to_string()),
        ("new.py".to_string(), "new\n".to_string()),
    ];
    assert_eq!(files(&live.join("vendor/lib")), expected);
    // Every release on disk holds exactly its commit's submodule.
    for id in server.releases() {
        let lib_dir = server.root.join("releases").join(&id).join("vendor/lib");
        let got = files(&lib_dir);
        assert!(
            got == expected
                || got
                    .iter()
                    .any(|(p, c)| p == "lib.py" && c == "version = 1\n"),
            "{id}: {got:?}"
        );
    }

    // Moved back to the old commit, and built from a release that holds the new one: only the
    // submodule's changed files are written.
    clone.set_submodule("vendor/lib", "../lib.git", &lib_1);
    clone.commit("back to lib 1");
    clone
        .push()
        .success()
        .stderr_has("built from")
        .stderr_lacks("fetching");
    assert_eq!(server.live_file("vendor/lib/old.py"), "gone soon\n");
    assert!(!live.join("vendor/lib/new.py").exists());
    assert_eq!(
        server.live_file("vendor/lib/deps/inner/inner.txt"),
        "inner 1\n"
    );

    // The submodule removed: its folder goes.
    clone.git(&["rm", "-q", "--cached", "vendor/lib"]).success();
    std::fs::remove_dir_all(clone.dir.join("vendor")).unwrap();
    clone.write(".gitmodules", "");
    clone.commit("no more lib");
    let push_out = clone.push().success().stderr();
    assert!(
        !live.join("vendor").exists(),
        "{:?} {}",
        files(&live),
        push_out
    );

    // The cache is the only thing read: lib.git may go once its commits are cached.
    std::fs::rename(&lib_bare, server.path().join("lib-moved.git")).unwrap();
    clone.set_submodule("vendor/lib", "../lib.git", &lib_2);
    clone.commit("lib is back");
    clone.push().success().stderr_lacks("fetching");
    assert_eq!(files(&live.join("vendor/lib")), expected);
}

#[test]
fn a_submodule_that_cannot_be_fetched_fails_before_the_switch() {
    let server = Server::new();
    server.config(&allowing(&server, CONFIG));
    let (lib_bare, lib) = library(&server, "lib");
    lib.commit_file("lib.py", "1\n");
    let lib_1 = publish(&lib);
    let clone = server.clone("work");
    clone.set_submodule("vendor/lib", lib_bare.to_str().unwrap(), &lib_1);
    clone.commit_file("app.py", "1\n");
    clone.push().success().stderr_has("deployed");
    let live = server.live().unwrap();

    // A commit lib.git never had.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    clone.set_submodule("vendor/lib", lib_bare.to_str().unwrap(), missing);
    clone.commit("a commit nobody pushed");
    clone
        .push()
        .success()
        .stderr_has(&format!(
            "submodule `vendor/lib`: commit `{missing}` could not be fetched from `{}`",
            lib_bare.display()
        ))
        .stderr_has("deploy FAILED");
    assert_eq!(server.live().unwrap(), live);
    assert_eq!(server.live_file("vendor/lib/lib.py"), "1\n");

    // A URL where nothing is.
    let nowhere = server.path().join("nowhere.git");
    clone.write(
        ".gitmodules",
        &format!(
            "[submodule \"vendor/lib\"]\n\tpath = vendor/lib\n\turl = {}\n",
            nowhere.display()
        ),
    );
    clone.commit("a URL where nothing is");
    clone
        .push()
        .success()
        .stderr_has(&format!("from `{}`", nowhere.display()))
        .stderr_has("deploy FAILED");
    assert_eq!(server.live().unwrap(), live);

    // A gitlink `.gitmodules` does not list.
    clone.write(".gitmodules", "");
    clone.commit("unlisted");
    clone
        .push()
        .success()
        .stderr_has("submodule `vendor/lib`: its commit")
        .stderr_has("does `.gitmodules` list `vendor/lib`?")
        .stderr_has("deploy FAILED");
    assert_eq!(server.live().unwrap(), live);
    // A malformed `.gitmodules`.
    clone.write(".gitmodules", "[submodule \"x\"\n");
    clone.commit("malformed");
    clone
        .push()
        .success()
        .stderr_has("`.gitmodules` is malformed")
        .stderr_has("deploy FAILED");
    assert_eq!(server.live().unwrap(), live);
}

#[test]
fn turning_submodules_on_checks_out_whole_once() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let (lib_bare, lib) = library(&server, "lib");
    lib.commit_file("lib.py", "1\n");
    let lib_1 = publish(&lib);
    let clone = server.clone("work");
    clone.set_submodule("vendor/lib", lib_bare.to_str().unwrap(), &lib_1);
    clone.commit_file("app.py", "0\n");
    clone.push().success().stderr_has(
        "submodule `vendor/lib` is left empty (`deploy.submodules = true` checks it out)",
    );
    for n in 1..3 {
        clone.commit_file("app.py", &format!("{n}\n"));
        clone.push().success();
    }
    assert!(server.root.join("current/vendor/lib").is_dir());
    server.config(&allowing(
        &server,
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\nsubmodules = true\n",
    ));
    clone.commit_file("app.py", "on\n");
    clone
        .push()
        .success()
        .stderr_has("it was checked out without submodules, and `deploy.submodules` is now true; checking the tree out whole");
    assert_eq!(server.live_file("vendor/lib/lib.py"), "1\n");
}
