//! Virtualenvs built by real pip from local wheels: the live environment survives failures
//! and rollbacks, each lockfile gets its own build, and gunicorn runs from a build whose
//! builder was pruned.

use crate::support::apps::*;
use crate::support::*;
use pretty_assertions::assert_eq;
use std::process::Command;
use std::time::Duration;

use super::*;

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
