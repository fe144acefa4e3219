//! `.gitmodules` is the pusher's to write: a submodule URL naming another app's repository on
//! the server, or a transport that runs a command, fetches nothing.

use crate::support::*;

/// Points the submodule at `path` to `commit` at `url` (`.gitmodules` written anew), and
/// commits.
fn point_submodule(clone: &Clone, path: &str, url: &str, commit: &str) {
    clone.write(".gitmodules", "");
    clone.set_submodule(path, url, commit);
    clone.commit("point a submodule");
}

#[test]
fn a_submodule_url_no_prefix_allows_is_never_fetched() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nsubmodules = true\n");
    // Another app beside this one, with its secrets.
    let other = server.path().join("other.git");
    let mut init = command("git", server.path());
    init.args(["init", "--quiet", "--bare", "-b", "main"])
        .arg(&other);
    run(&mut init, "git init --bare").success();
    let theirs = Clone::new_in(server.path(), "other-work");
    theirs.commit_file("secrets.py", "API_KEY = 'theirs'\n");
    theirs
        .git(&["push", "--quiet", other.to_str().unwrap(), "main"])
        .success();

    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    let live = server.live().unwrap();
    point_submodule(&clone, "vendor/x", "../other.git", &theirs.head());
    clone
        .push()
        .stderr_has(&format!(
            "submodule `vendor/x`: `{}` is not a URL submodules may be fetched from",
            other.display()
        ))
        .stderr_has("submodule_urls = [")
        .stderr_has("deploy FAILED");
    assert_eq!(server.live().as_deref(), Some(live.as_str()));
    let caches = server.root.join(".ats-hook/submodules");
    assert!(
        !caches.exists() || std::fs::read_dir(&caches).unwrap().next().is_none(),
        "a cache was filled from a URL nobody allowed"
    );

    // Allowed by prefix, a transport that runs a command is still refused by git.
    let marker = server.path().join("ext-ran");
    server.config("[deploy]\nroot = \"ROOT\"\nsubmodules = true\nsubmodule_urls = [\"ext::\"]\n");
    let url = format!("ext::sh -c touch% {}", marker.display());
    point_submodule(&clone, "vendor/x", &url, &theirs.head());
    clone.push().stderr_has("deploy FAILED");
    assert!(!marker.exists(), "an ext:: submodule URL ran its command");
    assert_eq!(server.live().as_deref(), Some(live.as_str()));
}
