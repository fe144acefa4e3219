//! Dependencies are part of the release, with the real tools: virtualenvs built by real pip
//! from local wheels, `node_modules` by real `npm ci` from a warm cache, gunicorn started from
//! a release whose build was made by a release long pruned. What is checked is what the app
//! would import: each release's own interpreter is asked which version it runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::apps::*;
use crate::support::*;

/// A virtualenv per requirements.txt, as README shows it; `EXTRA` takes more steps.
const VENV: &str = r#"
[deploy]
root = "ROOT"
branches = ["main", "next"]
keep_releases = KEEP

[env]
PIP_NO_INDEX = "1"
PIP_FIND_LINKS = "WHEELS"

[[step]]
name = "install"
run = "/usr/bin/python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt"
inputs = ["requirements.txt"]
outputs = [".venv"]
key = "/usr/bin/python3 --version"
timeout = "5m"
"#;

fn venv_config(keep: usize, extra: &str) -> String {
    format!(
        "{}{extra}",
        VENV.replace("KEEP", &keep.to_string())
            .replace("WHEELS", wheelhouse().to_str().unwrap())
    )
}

const OLD: &str = "2.1.2";
const NEW: &str = "2.2.0";

fn pin(version: &str) -> String {
    format!("itsdangerous=={version}\n")
}

/// The itsdangerous a release's own interpreter imports, asked the way the app would.
#[track_caller]
fn imported_version(release: &Path) -> String {
    let python = release.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.args([
        "-W",
        "ignore",
        "-c",
        "import itsdangerous; print(itsdangerous.__version__)",
    ]);
    run(
        &mut cmd,
        format!("{} -c 'import itsdangerous'", python.display()),
    )
    .success()
    .stdout()
    .trim()
    .to_string()
}

fn live_version(server: &Server) -> String {
    imported_version(&server.root.join("current"))
}

#[test]
fn the_live_environment_survives_a_failed_deploy_a_rollback_and_a_switch_back() {
    let server = Server::new();
    server.config(&venv_config(
        5,
        "[[step]]\nname = \"migrate\"\nrun = \"test ! -e broken-migration || { echo 'migration 0002 failed' >&2; exit 1; }\"\n\
         [health]\ncommand = \"test ! -e unhealthy\"\ntimeout = \"1s\"\ninterval = \"100ms\"\n",
    ));
    let clone = server.clone("work");
    clone.write("requirements.txt", &pin(OLD));
    let v1 = clone.commit("pin the old itsdangerous");
    clone.push().success();
    let first = server.live().unwrap();
    assert_eq!(live_version(&server), OLD);

    // The upgrade builds its own environment; its migration fails; the live release still
    // imports the old version, from the build it had.
    clone.write("requirements.txt", &pin(NEW));
    clone.write("broken-migration", "");
    clone.commit("upgrade, with a migration that fails");
    let push = clone.push();
    push.success()
        .stderr_has("install: building .venv")
        .stderr_has("migrate | migration 0002 failed")
        .stderr_has(&format!(
            "deploy FAILED at step migrate (exit 1); {} is still live",
            &v1[..7]
        ));
    let failed = server.last_record()["release"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.live(), Some(first.clone()));
    assert_eq!(live_version(&server), OLD);
    assert_eq!(server.build_of(&first, "install", ".venv"), first);
    assert_eq!(
        imported_version(&server.root.join("releases").join(&failed)),
        NEW
    );

    // Fixed: the upgrade reuses the environment the failed deploy built.
    std::fs::remove_file(clone.dir.join("broken-migration")).unwrap();
    clone.commit("fix the migration");
    clone.push().success().stderr_has(&format!(
        "install: reused .venv (requirements.txt and `/usr/bin/python3 --version` unchanged since {failed})"
    ));
    assert_eq!(live_version(&server), NEW);

    // A rollback brings the old version back with the old code.
    server
        .ats(&["rollback"])
        .success()
        .stderr_has(&format!("rolled back to {}", &v1[..7]));
    assert_eq!(server.live(), Some(first.clone()));
    assert_eq!(live_version(&server), OLD);

    // Deploying the upgrade again, unhealthy this time: the switch back brings the old
    // environment back too.
    clone.write("unhealthy", "");
    clone.commit("an unhealthy upgrade");
    let push = clone.push();
    push.success()
        .stderr_has("install: reused .venv")
        .stderr_has(&format!(
            "deploy FAILED at health check; switched back, {} is live again",
            &v1[..7]
        ));
    assert_eq!(server.live(), Some(first));
    assert_eq!(live_version(&server), OLD);
}

#[test]
fn seven_pushes_each_run_on_their_own_lockfile_and_reuse_what_was_built() {
    let server = Server::new();
    server.config(&venv_config(3, ""));
    let clone = server.clone("work");
    // (lockfile, whether the push reuses a build): the v1 build goes with the last release
    // that used it (push 4), so push 5 builds it again.
    let pushes = [
        (OLD, false),
        (NEW, false),
        (NEW, true),
        (NEW, true),
        (OLD, false),
        (NEW, true),
        (NEW, true),
    ];
    for (n, (version, reused)) in pushes.into_iter().enumerate() {
        clone.write("requirements.txt", &pin(version));
        clone.commit_file("app.py", &format!("push {}\n", n + 1));
        let push = clone.push();
        push.success();
        if reused {
            push.stderr_has("install: reused .venv (requirements.txt and `/usr/bin/python3 --version` unchanged since ");
        } else {
            push.stderr_has("install: building .venv");
        }
        let live = server.live().unwrap();
        assert_eq!(
            live_version(&server),
            version,
            "push {}: the live release runs on another lockfile's environment",
            n + 1
        );
        // Every release on disk runs on its own lockfile's environment, and the store keeps
        // exactly the builds they use: the live release's and the rollback target's included.
        for release in server.releases() {
            let dir = server.root.join("releases").join(&release);
            let wanted = std::fs::read_to_string(dir.join("requirements.txt")).unwrap();
            assert_eq!(
                pin(&imported_version(&dir)),
                wanted,
                "push {}: release {release}",
                n + 1
            );
        }
        assert_eq!(
            server.builds("install"),
            server.builds_in_use("install", ".venv"),
            "push {}",
            n + 1
        );
        assert!(server
            .builds("install")
            .contains(&server.build_of(&live, "install", ".venv")));
    }
    // The oldest release kept (push 5) runs on v1, the others on v2.
    assert_eq!(server.builds("install").len(), 2);
    let status = server.ats(&["status"]);
    status
        .success()
        .stdout_has("outputs:     2 stored builds, ");
}

#[test]
fn gunicorn_runs_from_a_build_whose_builder_was_pruned() {
    let server = Server::new();
    let port = closed_port();
    let pidfile = server.root.join("shared/gunicorn.pid");
    let config = venv_config(
        2,
        &format!(
            "[[step]]\nname = \"build\"\nrun = \"make build\"\n\
             [restart]\nsignal = {{ pidfile = \"shared/gunicorn.pid\", signal = \"HUP\" }}\n\
             [health]\nurl = \"http://127.0.0.1:{port}/\"\nexpect_body = \"{{commit}}\"\ntimeout = \"30s\"\ninterval = \"100ms\"\n"
        ),
    );
    // The first deploys come before gunicorn runs: nothing to restart or probe yet.
    server.config(config.split("[restart]").next().unwrap());
    let clone = server.clone("work");
    copy_sample_app(&clone);
    clone.commit("first version");
    clone.push().success().stderr_has("install: building .venv");
    let builder = server.live().unwrap();
    for n in 2..4 {
        clone.commit_file("VERSION", &n.to_string());
        clone.push().success().stderr_has("install: reused .venv");
    }
    let live = server.live().unwrap();
    assert!(
        !server.releases().contains(&builder),
        "the release that built the virtualenv is still on disk"
    );
    assert_eq!(server.build_of(&live, "install", ".venv"), builder);

    // gunicorn started as `.venv/bin/gunicorn` from the live release: its shebang names the
    // build, which outlived the release that made it.
    std::fs::create_dir_all(pidfile.parent().unwrap()).unwrap();
    let release = server.root.join("releases").join(&live);
    let mut gunicorn = Command::new(release.join(".venv/bin/gunicorn"));
    gunicorn
        .args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "1"])
        .arg("--chdir")
        .arg(server.root.join("current"))
        .arg("--pid")
        .arg(&pidfile)
        .arg("wsgi:application")
        .current_dir(&release)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = gunicorn.spawn().expect("gunicorn from the release");
    let _gunicorn = ChildGuard(child);
    let url = format!("http://127.0.0.1:{port}/");
    wait_for_body(&url, &clone.head(), Duration::from_secs(30));

    // A new commit, HUP, health check: it serves the new commit.
    server.config(&config);
    wait_for("gunicorn's pidfile", Duration::from_secs(10), || {
        pidfile.exists()
    });
    let v4 = clone.commit_file("VERSION", "4");
    clone
        .push()
        .success()
        .stderr_has("install: reused .venv")
        .stderr_has("health: ok after");
    assert_eq!(get(&url).unwrap().trim(), v4);
}

/// The install step with a pause after pip, while `ROOT/pause` exists: a build whose
/// virtualenv looks whole, killed before it finished.
const PAUSING: &str = r#" && if [ -e \"$ATS_DEPLOY_ROOT/pause\" ]; then echo $PPID > \"$ATS_DEPLOY_ROOT/hook.pid\"; echo $$ > \"$ATS_DEPLOY_ROOT/step.pid\"; sleep 300; fi""#;

#[test]
fn builds_that_were_killed_or_timed_out_are_never_used() {
    let server = Server::new();
    let config = venv_config(5, "").replace(
        "-r requirements.txt\"",
        &format!("-r requirements.txt{PAUSING}"),
    );
    server.config(&config);
    let clone = server.clone("work");
    clone.write("requirements.txt", &pin(OLD));
    clone.commit("first");
    clone.push().success();
    let live = server.live().unwrap();
    clone.commit_file("requirements.txt", &pin(NEW));
    let pause = server.root.join("pause");
    let (hook_pid, step_pid) = (server.root.join("hook.pid"), server.root.join("step.pid"));

    // 1. The build's own processes killed with SIGKILL: the step fails. (Each attempt is a
    // new commit of a file that is not an input: the same key every time.)
    std::fs::write(&pause, "").unwrap();
    clone.commit_file("app.py", "1\n");
    let push = clone.spawn_push(&["main"]);
    let step = pid_in(&step_pid);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(step),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("deploy FAILED at step install (killed by SIGKILL, exit 137)"),
        "{stderr}"
    );
    assert_eq!(server.builds("install"), BTreeSet::from([live.clone()]));

    // 2. The hook itself killed with SIGKILL, once the virtualenv is whole: an unfinished
    // build stays on disk, and no key names it.
    std::fs::remove_file(&step_pid).unwrap();
    std::fs::remove_file(&hook_pid).unwrap();
    clone.commit_file("app.py", "2\n");
    let (push, hook) = clone.spawn_push_until_pid(&hook_pid);
    let step = pid_in(&step_pid);
    send_signal(hook, nix::sys::signal::Signal::SIGKILL);
    push.wait_with_output().unwrap();
    // The step dies with the hook; what it built stays in its own folder, which no later build
    // uses.
    wait_for(
        "the step to die with its hook",
        std::time::Duration::from_secs(10),
        || !alive(step),
    );
    let killed: Vec<String> = server
        .builds("install")
        .into_iter()
        .filter(|b| *b != live)
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");
    let killed = killed[0].clone();
    assert!(server
        .root
        .join("outputs/install")
        .join(&killed)
        .join(".venv/bin/python")
        .exists());
    assert_eq!(server.live(), Some(live.clone()));

    // 3. Past its timeout (the same key: the timeout is not part of it).
    server.config(&config.replace("timeout = \"5m\"", "timeout = \"1s\""));
    std::fs::remove_file(&pause).unwrap();
    clone.commit_file("app.py", "3\n");
    let push = clone.push();
    push.success()
        .stderr_has("did not finish (its process died); recording it as interrupted")
        .stderr_has("install: building .venv")
        .stderr_has("deploy FAILED at step install (timed out after 1s)");
    assert_eq!(live_version(&server), OLD);

    // 4. The next push builds from scratch, in a folder of its own, and runs.
    server.config(&config);
    clone.commit_file("app.py", "4\n");
    let push = clone.push();
    push.success()
        .stderr_has("install: building .venv")
        .stderr_lacks("install: reused");
    let now = server.live().unwrap();
    assert_eq!(server.build_of(&now, "install", ".venv"), now);
    assert_eq!(live_version(&server), NEW);
    // The killed build's folder went with the prune.
    assert!(!server.builds("install").contains(&killed));
    let records = server.records();
    let states: Vec<&str> = records
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["succeeded", "failed", "interrupted", "failed", "succeeded"]
    );
}

#[test]
fn two_pushes_at_once_with_different_lockfiles_each_get_their_own() {
    let server = Server::new();
    server.config(&venv_config(5, ""));
    let clone = server.clone("work");
    clone.write("requirements.txt", &pin(OLD));
    let main = clone.commit("main pins the old version");
    clone.git(&["checkout", "-q", "-b", "next"]).success();
    clone.write("requirements.txt", &pin(NEW));
    let next = clone.commit("next pins the new one");
    let first = clone.spawn_push(&[&format!("{main}:refs/heads/main")]);
    let second = clone.spawn_push(&[&format!("{next}:refs/heads/next")]);
    for push in [first, second] {
        let output = push.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let records = server.records();
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record["state"], "succeeded", "{record}");
        let release = server
            .root
            .join("releases")
            .join(record["release"].as_str().unwrap());
        let wanted = if record["commit"] == main.as_str() {
            OLD
        } else {
            NEW
        };
        assert_eq!(imported_version(&release), wanted, "{record}");
    }
    assert_eq!(server.builds("install").len(), 2);
}

/// package-lock.json for is-number 6.0.0 (the fixture has 7.0.0), as npm wrote it.
const LOCK_6: &str = r#"{
  "name": "ats-hook-sample-node-app",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {
      "name": "ats-hook-sample-node-app",
      "version": "1.0.0",
      "dependencies": {
        "is-number": "6.0.0"
      }
    },
    "node_modules/is-number": {
      "version": "6.0.0",
      "integrity": "sha512-Wu1VHeILBK8KAWJUAiSZQX94GmOE45Rg6/538fKwiloUu21KncEkYGPqob2oSZ5mUT73vLGrHQjKw3KMPwfDzg==",
      "engines": {
        "node": ">=0.10.0"
      }
    }
  }
}
"#;

fn run_node_app(release: &Path) -> String {
    let mut cmd = Command::new("node");
    cmd.arg("app.js").current_dir(release);
    run(&mut cmd, "node app.js")
        .success()
        .stdout()
        .trim()
        .to_string()
}

#[test]
fn npm_ci_output_is_reused_while_the_lockfile_holds() {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm-cache");
    assert!(
        cache.is_dir(),
        "{} is missing: tests/run fills npm's cache",
        cache.display()
    );
    let server = Server::new();
    let config = example_config(
        "node-npm.toml",
        &[
            ("/srv/node-app", server.root.to_str().unwrap()),
            ("npm ci --omit=dev", "npm ci --omit=dev --offline"),
        ],
    );
    // No service to restart or probe here: the app runs from the release.
    let config = config.split("[restart]").next().unwrap().replace(
        "[env]\n",
        &format!("[env]\nnpm_config_cache = \"{}\"\n", cache.display()),
    );
    server.config(&config);
    let clone = server.clone("work");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-app");
    for file in ["package.json", "package-lock.json", "app.js"] {
        std::fs::copy(fixture.join(file), clone.dir.join(file)).unwrap();
    }
    clone.commit("a node app");
    clone
        .push()
        .success()
        .stderr_has("npm-ci: building node_modules")
        .stderr_has("check | is-number 7.0.0: 42 is a number: true");
    let first = server.live().unwrap();
    assert_eq!(
        run_node_app(&server.root.join("current")),
        "is-number 7.0.0: 42 is a number: true"
    );

    clone.commit_file(
        "app.js",
        &std::fs::read_to_string(fixture.join("app.js"))
            .unwrap()
            .replace("is a number", "is still a number"),
    );
    clone
        .push()
        .success()
        .stderr_has(&format!("npm-ci: reused node_modules (package.json, package-lock.json, .npmrc and `node --version` unchanged since {first})"));
    assert_eq!(
        run_node_app(&server.root.join("current")),
        "is-number 7.0.0: 42 is still a number: true"
    );

    clone.write(
        "package.json",
        &std::fs::read_to_string(fixture.join("package.json"))
            .unwrap()
            .replace("7.0.0", "6.0.0"),
    );
    clone.write("package-lock.json", LOCK_6);
    clone.commit("is-number 6");
    clone
        .push()
        .success()
        .stderr_has("npm-ci: building node_modules");
    assert_eq!(
        run_node_app(&server.root.join("current")),
        "is-number 6.0.0: 42 is still a number: true"
    );
    // The first release still runs on what it was deployed with.
    assert_eq!(
        run_node_app(&server.root.join("releases").join(&first)),
        "is-number 7.0.0: 42 is a number: true"
    );
    assert_eq!(server.builds("npm-ci").len(), 2);
}
