//! Pushes that deploy: the release, shared paths, environment, restart, history, selection.

use std::path::Path;
use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::*;

const APP_CONFIG: &str = r#"
[deploy]
root = "ROOT"
keep_releases = 3

[shared]
paths = [".env", "log", "media/uploads"]

[env]
APP_MODE = "production"
PORT = 8000
file = "shared/.env"

[[step]]
name = "install"
run = "echo installing; printf '%s|%s|%s|%s|%s|%s|%s|%s|%s\n' \"$ATS_RELEASE_ID\" \"$ATS_COMMIT\" \"$ATS_PREVIOUS_COMMIT\" \"$ATS_REF\" \"$ATS_DEPLOY_ROOT\" \"$ATS_RELEASE_DIR\" \"$APP_MODE\" \"$PORT\" \"$SECRET_KEY\" > vars.txt"

[[step]]
name = "migrate"
run = "echo migrating >&2; pwd > pwd.txt"

[restart]
touch = "wsgi.py"
"#;

fn app_server() -> Server {
    let server = Server::new();
    server.config(APP_CONFIG);
    std::fs::create_dir_all(server.root.join("shared")).unwrap();
    std::fs::write(
        server.root.join("shared/.env"),
        "# secrets\nSECRET_KEY=\"s3cret value\"\n",
    )
    .unwrap();
    server
}

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
fn restart_sends_the_signal_to_the_pidfile_process() {
    let server = Server::new();
    let marker = server.path().join("got-hup");
    let pidfile = server.path().join("app.pid");
    // A real process that records the HUP it is sent, as gunicorn would reload on it.
    let script = format!(
        "trap 'echo hup >> {m}' HUP; echo $$ > {p}; while :; do sleep 0.05; done",
        m = marker.display(),
        p = pidfile.display()
    );
    let mut app = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .unwrap();
    wait_for(
        "the app's pidfile",
        std::time::Duration::from_secs(10),
        || pidfile.exists(),
    );
    server.config(&format!(
        "[deploy]\nroot = \"ROOT\"\n[restart]\nsignal = {{ pidfile = \"{}\", signal = \"HUP\" }}\n",
        pidfile.display()
    ));
    let clone = server.clone("work");
    clone.commit_file("a", "a");
    let push = clone.push();
    wait_for(
        "the HUP to arrive",
        std::time::Duration::from_secs(10),
        || marker.exists(),
    );
    app.kill().unwrap();
    app.wait().unwrap();
    push.success()
        .stderr_has(&format!("restart: sent SIGHUP to pid {}", app.id()));
}

#[test]
fn a_failing_restart_switches_back_and_restarts_the_old_release() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[restart]\ncommand = 'echo \"$PWD $ATS_RELEASE_DIR\" >> restarts; test ! -e current/broken'\n",
    );
    let clone = server.clone("work");
    clone.write("a", "a");
    let good = clone.commit("good");
    clone.push().success();
    let good_release = server.live().unwrap();
    clone.write("broken", "");
    clone.commit("broken");
    let push = clone.push();
    push.success();
    assert_eq!(
        push.summary(),
        format!(
            "ats-hook: deploy FAILED at restart; switched back, {} is live again",
            &good[..7]
        )
    );
    assert_eq!(server.live(), Some(good_release.clone()));
    let record = server.last_record();
    assert_eq!(record["state"], "rolled-back");
    assert_eq!(record["failed_step"], "restart");
    let restarts = std::fs::read_to_string(server.root.join("restarts")).unwrap();
    let lines: Vec<&str> = restarts.lines().collect();
    assert_eq!(lines.len(), 3, "{restarts}");
    assert!(
        lines[2].ends_with(&format!("releases/{good_release}")),
        "{restarts}"
    );
    // Restart commands run in the deploy root, never inside a release.
    let root = server.root.canonicalize().unwrap();
    for line in &lines {
        assert!(
            line.starts_with(&format!("{} ", root.display())),
            "{restarts}"
        );
    }
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

#[test]
fn a_touch_lands_in_a_later_second_than_the_file_the_app_saw() {
    // uWSGI's touch-reload compares whole seconds: two deploys in one second must still touch
    // the new release's file in a later second than the previous one's.
    use std::os::unix::fs::MetadataExt;
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n[restart]\ntouch = \"wsgi.py\"\n");
    let clone = server.clone("work");
    let mut seconds = Vec::new();
    for n in 0..3 {
        clone.commit_file("wsgi.py", &format!("# {n}\n"));
        clone
            .push()
            .success()
            .stderr_has("restart: touched `wsgi.py`");
        let live = server.root.join("current/wsgi.py");
        seconds.push(std::fs::metadata(live).unwrap().mtime());
    }
    assert!(
        seconds.windows(2).all(|w| w[1] > w[0]),
        "touches in the same second: {seconds:?}"
    );
}

/// A server without systemd: the first deploy starts it (no pidfile yet), the next ones signal
/// it, and one that died is started again. Restart commands run in the deploy root; with
/// `env = "clean"` nothing of the env file nor any ATS_* variable reaches what they start.
#[test]
fn restart_starts_the_app_when_its_pidfile_names_no_process_and_signals_it_after() {
    struct KillPidfile(std::path::PathBuf);
    impl Drop for KillPidfile {
        fn drop(&mut self) {
            if let Some(pid) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let server = Server::new();
    let _app = KillPidfile(server.root.join("app.pid"));
    std::fs::create_dir_all(server.root.join("shared")).unwrap();
    std::fs::write(server.root.join("shared/.env"), "SECRET=s3cret\n").unwrap();
    let config = "[deploy]\nroot = \"ROOT\"\n[env]\nfile = \"shared/.env\"\n\
         [restart]\nsignal = { pidfile = \"app.pid\", signal = \"USR1\" }\n\
         start = '''\nenv > started-env\npwd > started-in\n\
         setsid sh -c 'trap \"echo signalled >> signals\" USR1; while :; do sleep 0.1; done' </dev/null >/dev/null 2>&1 &\n\
         echo $! > app.pid\n'''\nenv = \"ENV\"\n";
    server.config(&config.replace("ENV", "clean"));
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    let first = clone.push();
    first
        .success()
        .stderr_has(&format!(
            "restart: no pidfile `{}`; starting the app",
            server.root.join("app.pid").display()
        ))
        // A command of several lines is named by its first.
        .stderr_has("restart: ran `env > started-env …`")
        .stderr_lacks("pwd > started-in");
    let pid: i32 = std::fs::read_to_string(server.root.join("app.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    let started_in = std::fs::read_to_string(server.root.join("started-in")).unwrap();
    assert_eq!(
        Path::new(started_in.trim()),
        server.root.canonicalize().unwrap()
    );
    let env = std::fs::read_to_string(server.root.join("started-env")).unwrap();
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(!env.contains("SECRET"), "{env}");
    assert!(!env.contains("ATS_"), "{env}");

    clone.commit_file("app.py", "2\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("restart: sent SIGUSR1 to pid {pid}"));
    wait_for("the signal", Duration::from_secs(5), || {
        std::fs::read_to_string(server.root.join("signals")).is_ok_and(|s| s.lines().count() == 1)
    });

    // It dies: the next deploy starts it again, and removes the stale pidfile first.
    send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_for("the app to die", Duration::from_secs(5), || !alive(pid));
    server.config(&config.replace("ENV", "deploy"));
    clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has(&format!(
            "restart: pid {pid} from `{}` is not running (the stale pidfile is removed); starting the app",
            server.root.join("app.pid").display()
        ));
    let again: i32 = std::fs::read_to_string(server.root.join("app.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(again, pid);
    assert!(alive(again));
    // With `env = "deploy"`, it gets what steps get.
    let env = std::fs::read_to_string(server.root.join("started-env")).unwrap();
    assert!(env.contains("SECRET=s3cret"), "{env}");
    assert!(env.contains("ATS_RELEASE_ID="), "{env}");
}

#[test]
fn a_signal_with_no_process_to_receive_it_fails_the_restart_and_says_what_to_set() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n[restart]\nsignal = { pidfile = \"app.pid\" }\n");
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone
        .push()
        .success()
        .stderr_has("no pidfile")
        .stderr_has("set `restart.start`");
    assert_eq!(server.last_record()["state"], "rolled-back");
    assert_eq!(server.live(), None);

    std::fs::create_dir_all(&server.root).unwrap();
    std::fs::write(server.root.join("app.pid"), "not a pid\n").unwrap();
    clone.commit_file("app.py", "2\n");
    clone.push().success().stderr_has(&format!(
        "pidfile `{}` does not hold a pid",
        server.root.join("app.pid").display()
    ));
    assert_eq!(server.live(), None);
}
