//! A push deploys its commit into a release and switches `current`; later pushes keep what
//! a rollback needs; only the selected refs deploy; what comes with a push runs nothing.

use crate::support::*;
use pretty_assertions::assert_eq;

use super::*;

#[test]
fn push_deploys_a_release_and_switches_current() {
    let server = app_server();
    let clone = server.clone("work");
    clone
        .write("app.py", "print('v1')\n")
        .write("wsgi.py", "application = None\n");
    clone
        .write("log/.gitkeep", "")
        .executable("bin/run", "#!/bin/sh\necho run\n");
    std::os::unix::fs::symlink("app.py", clone.dir.join("link.py")).unwrap();
    let sha = clone.commit("first");

    let push = clone.push();
    push.success();
    let live = server.live().expect("current was not created");
    assert!(live.ends_with(&format!("-{}", &sha[..7])), "{live}");
    assert_eq!(server.releases(), vec![live.clone()]);

    // The tree of the commit, byte for byte, with modes and symlinks.
    assert_eq!(server.live_file("app.py"), "print('v1')\n");
    let release = server.root.join("releases").join(&live);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(release.join("bin/run"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "bin/run lost its executable bit");
    assert_eq!(
        std::fs::read_link(release.join("link.py"))
            .unwrap()
            .to_str(),
        Some("app.py")
    );

    // Shared paths are links into shared/; the tracked `log` folder was replaced.
    for path in [".env", "log", "media/uploads"] {
        let link = std::fs::read_link(release.join(path)).unwrap();
        assert_eq!(link, server.root.join("shared").join(path));
    }
    push.stderr_has("shared: tracked `log` replaced by the link to `shared/log`");

    // Steps ran in the release with the deploy's variables, the [env] table and the env file.
    let vars = server.live_file("vars.txt");
    let expected = format!(
        "{live}|{sha}||refs/heads/main|{root}|{root}/releases/{live}|production|8000|s3cret value\n",
        root = server.root.display()
    );
    assert_eq!(vars, expected);
    assert_eq!(
        server.live_file("pwd.txt").trim(),
        release.to_str().unwrap()
    );

    // The pusher read prefixed step output and one summary.
    let lines = push.remote_lines();
    assert!(
        lines.contains(&"install | installing".to_string()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"migrate | migrating".to_string()),
        "{lines:#?}"
    );
    let summary = push.summary();
    assert!(
        summary.starts_with(&format!(
            "ats-hook: deployed {} (main) as {live} in ",
            &sha[..7]
        )),
        "{summary}"
    );
    assert!(
        summary.contains("install ")
            && summary.contains("migrate ")
            && summary.contains("restart "),
        "{summary}"
    );
    push.stderr_lacks("s3cret");

    // The restart touched the WSGI file of the new release.
    let touched = std::fs::metadata(release.join("wsgi.py"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(touched.elapsed().unwrap().as_secs() < 60);

    // The history has the deploy, and its log the full output.
    let record = server.last_record();
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["commit"], sha.as_str());
    assert_eq!(record["ref"], "refs/heads/main");
    assert_eq!(record["release"], live.as_str());
    assert_eq!(record["pusher"], "tester");
    assert_eq!(record["steps"][0]["name"], "install");
    assert_eq!(record["steps"][0]["status"], "ok");
    assert_eq!(record["steps"][1]["exit_code"], 0);
    let log =
        std::fs::read_to_string(server.root.join(format!(".ats-hook/logs/{live}.log"))).unwrap();
    assert!(log.contains("install | installing"), "{log}");
    assert!(log.contains("ats-hook: deployed"), "{log}");
    assert!(server
        .root
        .join(format!(".ats-hook/index/{live}"))
        .is_file());
}

#[test]
fn second_push_keeps_the_first_release_and_knows_the_previous_commit() {
    let server = app_server();
    let clone = server.clone("work");
    clone.write("app.py", "v1\n");
    let first = clone.commit("first");
    clone.push().success();
    let first_release = server.live().unwrap();

    clone.write("app.py", "v2\n").write("new.txt", "new\n");
    std::fs::remove_file(clone.dir.join("app.py")).unwrap();
    let second = clone.commit("second");
    clone.push().success();
    let second_release = server.live().unwrap();

    assert_ne!(first_release, second_release);
    assert_eq!(
        server.releases(),
        vec![first_release.clone(), second_release.clone()]
    );
    assert!(
        !server.root.join("current/app.py").exists(),
        "a deleted file survived"
    );
    assert_eq!(server.live_file("new.txt"), "new\n");
    let vars = server.live_file("vars.txt");
    assert!(vars.contains(&format!("|{second}|{first}|")), "{vars}");
    // The old release is untouched.
    assert_eq!(
        std::fs::read_to_string(
            server
                .root
                .join("releases")
                .join(&first_release)
                .join("app.py")
        )
        .unwrap(),
        "v1\n"
    );
    assert_eq!(
        server.last_record()["previous_release"],
        first_release.as_str()
    );
}

#[test]
fn old_releases_are_pruned_but_never_the_live_or_rollback_one() {
    let server = app_server();
    let clone = server.clone("work");
    let mut deployed = Vec::new();
    for n in 0..5 {
        clone.write("n.txt", &n.to_string());
        clone.commit(&format!("commit {n}"));
        clone.push().success();
        deployed.push(server.live().unwrap());
    }
    // keep_releases = 3: the three newest remain, the live one and its predecessor among them.
    let mut kept = deployed[2..].to_vec();
    kept.sort();
    assert_eq!(server.releases(), kept);
    assert_eq!(server.live().as_deref(), Some(deployed[4].as_str()));
    assert!(!server
        .root
        .join(format!(".ats-hook/index/{}", deployed[0]))
        .exists());
}

#[test]
fn refs_that_are_not_selected_are_ignored() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    clone.git(&["checkout", "-q", "-b", "feature"]).success();
    let push = clone.push_args(&["feature"]);
    push.success();
    assert!(push
        .remote_lines()
        .contains(&"ats-hook: ignored `refs/heads/feature`: not deployed here (this server deploys branches main)".to_string()));
    assert!(
        !server.root.exists(),
        "an ignored push created the deploy root"
    );
}

#[test]
fn deleting_the_deployed_branch_deploys_nothing() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    clone.push().success();
    let live = server.live().unwrap();
    // A bare repository refuses to delete its HEAD branch unless told otherwise.
    run(
        command("git", server.path())
            .args(["config", "receive.denyDeleteCurrent", "ignore"])
            .current_dir(&server.bare),
        "git config",
    )
    .success();
    let push = clone.push_args(&[":main"]);
    push.success().stderr_has(
        "ats-hook: `refs/heads/main` was deleted: nothing to deploy, the live release stays live",
    );
    assert_eq!(server.live(), Some(live));
    assert_eq!(server.records().len(), 1);
}

#[test]
fn one_push_of_several_deploy_refs_deploys_the_last() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nbranches = [\"main\", \"release/*\"]\n");
    let clone = server.clone("work");
    clone.write("a", "one");
    let one = clone.commit("one");
    clone.git(&["branch", "release/1"]).success();
    clone.write("a", "two");
    let two = clone.commit("two");
    let push = clone.push_args(&["release/1", "main"]);
    push.success()
        .stderr_has("this push updates several deploy refs; deploying the last one");
    let records = server.records();
    assert_eq!(records.len(), 1, "one push, one deploy");
    let deployed = records[0]["commit"].as_str().unwrap().to_string();
    let git_ref = records[0]["ref"].as_str().unwrap();
    let expected = if git_ref == "refs/heads/main" {
        &two
    } else {
        &one
    };
    assert_eq!(&deployed, expected);
    push.stderr_has(&format!("deploying the last one, `{git_ref}`"));
}

#[test]
fn tags_matching_the_glob_deploy_and_are_peeled() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nbranches = []\ntags = \"[0-9]*.[0-9]*.[0-9]*\"\n");
    let clone = server.clone("work");
    let sha = clone.commit_file("a", "a");
    clone
        .push()
        .success()
        .stderr_has("ignored `refs/heads/main`");
    assert_eq!(server.live(), None);
    clone
        .git(&["tag", "-a", "-m", "release", "1.2.3"])
        .success();
    clone.git(&["tag", "v1"]).success();
    clone
        .push_args(&["v1"])
        .success()
        .stderr_has("ignored `refs/tags/v1`");
    assert_eq!(server.live(), None);
    let push = clone.push_args(&["1.2.3"]);
    push.success()
        .stderr_has(&format!("deployed {} (1.2.3)", &sha[..7]));
    assert_eq!(server.last_record()["commit"], sha.as_str());
    assert_eq!(server.last_record()["ref"], "refs/tags/1.2.3");
}

#[test]
fn ref_names_and_messages_with_shell_syntax_run_nothing() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\nbranches = [\"*\"]\n[[step]]\nname = \"show\"\nrun = 'printf \"%s\\n\" \"$ATS_REF\" > ref.txt'\n",
    );
    let clone = server.clone("work");
    clone.write("a", "a");
    clone.commit("$(touch pwned-message) `touch pwned-backtick`; touch pwned-semicolon");
    let branch = "x$(touch${IFS}pwned-ref);touch${IFS}pwned-ref2";
    clone.git(&["checkout", "-q", "-b", branch]).success();
    let push = clone.push_args(&[branch]);
    push.success();
    assert_eq!(
        server.live_file("ref.txt"),
        format!("refs/heads/{branch}\n")
    );
    for dir in [
        server.path().to_path_buf(),
        server.bare.clone(),
        server.root.join("current"),
        clone.dir.clone(),
    ] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with("pwned"),
                "{name} was created in {}",
                dir.display()
            );
        }
    }
}

#[test]
fn steps_do_not_inherit_git_hook_variables() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"env\"\nrun = \"env > env.txt\"\n");
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    clone.push().success();
    let env = server.live_file("env.txt");
    let leaked: Vec<&str> = env.lines().filter(|l| l.starts_with("GIT_")).collect();
    assert!(leaked.is_empty(), "leaked into a step: {leaked:?}");
    assert!(env.contains("ATS_REF=refs/heads/main"));
}

#[test]
fn a_current_that_is_a_folder_is_refused_before_anything_runs() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"mark\"\nrun = \"touch $ATS_DEPLOY_ROOT/ran\"\n");
    std::fs::create_dir_all(server.root.join("current")).unwrap();
    std::fs::write(server.root.join("current/index.php"), "old site").unwrap();
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    clone
        .push()
        .success()
        .stderr_has("is not a symlink: move it away so ats-hook can manage it");
    assert!(!server.root.join("ran").exists());
    assert_eq!(
        std::fs::read_to_string(server.root.join("current/index.php")).unwrap(),
        "old site"
    );
}

#[test]
fn tracked_symlinks_cannot_lead_writes_outside_the_release() {
    let server = Server::new();
    let outside = server.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    server.config("[deploy]\nroot = \"ROOT\"\n[shared]\npaths = [\"data/uploads\"]\n");
    let clone = server.clone("work");
    std::os::unix::fs::symlink(&outside, clone.dir.join("data")).unwrap();
    clone.commit("data is a symlink out");
    let push = clone.push();
    push.success()
        .stderr_has("is not a folder of the release")
        .stderr_has("deploy FAILED");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside"
    );
    assert_eq!(server.live(), None);

    server.config("[deploy]\nroot = \"ROOT\"\n[restart]\ntouch = \"wsgi.py\"\n");
    let target = outside.join("wsgi.py");
    std::fs::write(&target, "").unwrap();
    let before = std::fs::metadata(&target).unwrap().modified().unwrap();
    std::fs::remove_file(clone.dir.join("data")).unwrap();
    std::os::unix::fs::symlink(&target, clone.dir.join("wsgi.py")).unwrap();
    clone.commit("wsgi.py points out");
    std::thread::sleep(std::time::Duration::from_millis(20));
    clone.push().success().stderr_has("refusing to touch");
    assert_eq!(
        std::fs::metadata(&target).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn the_shipped_hook_shim_deploys_too() {
    let server = Server::new();
    let hook = server.bare.join("hooks/post-receive");
    std::fs::remove_file(&hook).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/hooks/post-receive"),
        &hook,
    )
    .unwrap();
    let clone = server.clone("work");
    let sha = clone.commit_file("a", "a");
    let mut push = command("git", server.path());
    push.args(["push", "staging", "main"])
        .current_dir(&clone.dir)
        .env("ATS_HOOK_BIN", BIN);
    run(&mut push, "git push through the shim")
        .success()
        .stderr_has(&format!("ats-hook: deployed {} (main)", &sha[..7]));
    assert_eq!(server.live_file("a"), "a");
}
