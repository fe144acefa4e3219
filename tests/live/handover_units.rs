//! The handover with each slot a systemd instance (`app@a.service`, `app@b.service` from
//! contrib/systemd/app@.service) and nginx a unit too, under a real systemd; pushed over SSH
//! by a deploy user whose only privileges are the shipped sudoers rule's.

use crate::support::apps::*;
use crate::support::proxy::{changes, Clients, Nginx};
use crate::support::system::{Public, SshSetup, User};
use crate::support::*;
use pretty_assertions::assert_eq;
use std::time::Duration;

fn push(setup: &SshSetup, clone: &Clone) -> Run {
    let mut cmd = command("git", &clone.dir);
    cmd.args(["push", "staging", "main"])
        .current_dir(&clone.dir)
        .env("GIT_SSH_COMMAND", setup.ssh());
    run(&mut cmd, "git push staging main (over ssh)")
}

#[test]
fn slots_as_systemd_instances_hand_over_for_a_deploy_user_with_sudo() {
    let public = Public::new();
    let user = User::create();
    let root = user.home.join("app");
    let slots = [closed_port(), closed_port()].map(|p| format!("127.0.0.1:{p}"));
    let units = public.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let nginx = Nginx::configure(public.path(), &format!("127.0.0.1:{}", closed_port()));
    // The deploy user writes the upstream file; nginx reads it as root.
    let upstream_dir = nginx.upstream.parent().unwrap();
    std::os::unix::fs::chown(upstream_dir, Some(user.uid()), None).unwrap();
    std::os::unix::fs::chown(&nginx.upstream, Some(user.uid()), None).unwrap();
    std::fs::write(units.join("nginx.service"), nginx.unit()).unwrap();
    let systemd = Systemd::boot(&units);
    systemd.systemctl(&["start", "nginx.service"]).success();
    let test = format!("sudo -n {}", nginx.test_command());
    let config = super::handover::config(
        &root,
        &slots,
        &nginx,
        &[
            ("sudo -n /usr/sbin/nginx -t -q", &test),
            (
                "start = \".venv/bin/gunicorn --bind {addr} --workers 2 --graceful-timeout 20 wsgi:application\"",
                "unit = \"app@.service\"\nsudo = true",
            ),
            ("timeout = \"30s\"", "timeout = \"15s\""),
        ],
    );
    let uid = user.uid();
    let setup = SshSetup::with(public, user, "post-receive", &config, Some(systemd.pid));
    // The unit and the sudoers rule are the ones `install --handover` prints for this config.
    let printed = setup.public.ats(&[
        "install",
        "--repo",
        setup.repo.to_str().unwrap(),
        "--handover",
    ]);
    printed.success();
    let printed = printed.stdout();
    let unit = section(&printed, "## /etc/systemd/system/app@.service");
    assert!(
        unit.contains(&format!("User={}", setup.user.name)),
        "{printed}"
    );
    std::fs::write(
        units.join("app@.service"),
        unit.replace("--workers 3", "--workers 2"),
    )
    .unwrap();
    systemd.systemctl(&["daemon-reload"]).success();
    let sudoers = section(
        &printed,
        &format!("## /etc/sudoers.d/ats-hook-{}-handover", setup.user.name),
    );
    for allowed in [
        "/usr/bin/systemctl start app@a.service",
        "/usr/bin/systemctl stop app@b.service",
        "/usr/bin/systemctl reload nginx",
    ] {
        assert!(sudoers.contains(allowed), "{printed}");
    }
    let _sudoers = Sudoers::install_text(&format!("handover-{}", setup.user.name), &sudoers);
    super::handover::write_env(&setup.root, Some(uid));
    let clone = setup.clone();
    copy_sample_app(&clone);

    let v1 = clone.commit("first version");
    push(&setup, &clone)
        .success()
        .stderr_has("slot a: started app@a.service for ")
        .stderr_has("health of slot a: ok after")
        .stderr_has("proxy: ok after")
        .stderr_has(&format!("ats-hook: deployed {}", &v1[..7]));
    assert_eq!(get(&nginx.url("")).unwrap().trim(), v1);
    assert_eq!(nginx.points_at(), slots[0]);

    let active = |unit: &str| {
        systemd
            .systemctl(&["is-active", unit])
            .stdout()
            .trim()
            .to_string()
    };
    // A good release under load: no failed request, the commit changes once.
    let v2 = clone.commit_file("NOTES", "second\n");
    let clients = Clients::start(nginx.port, "", 4);
    std::thread::sleep(Duration::from_millis(500));
    push(&setup, &clone)
        .success()
        .stderr_has("slot b: started app@b.service for ")
        .stderr_has("slot a: stopped app@a.service");
    std::thread::sleep(Duration::from_millis(500));
    for (n, seen) in clients.stop().iter().enumerate() {
        assert_eq!(seen.failures, Vec::<String>::new(), "client {n}");
        assert_eq!(changes(seen), [v1.as_str(), v2.as_str()], "client {n}");
    }
    assert_eq!(active("app@a.service"), "inactive");
    assert_eq!(active("app@b.service"), "active");
    assert_eq!(nginx.points_at(), slots[1]);

    // A release that answers 500 is stopped on its slot; users only ever see v2.
    clone.write(
        "wsgi.py",
        "def application(environ, start_response):\n    start_response('500 Internal Server Error', [])\n    return [b'broken\\n']\n",
    );
    clone.commit("answers 500");
    let clients = Clients::start(nginx.port, "", 4);
    std::thread::sleep(Duration::from_millis(500));
    push(&setup, &clone)
        .stderr_has("HTTP 500 (expected 200)")
        .stderr_has("slot a: stopped app@a.service")
        .stderr_has(&format!(
            "deploy FAILED at the health check of slot a, before any request reached it; {} is still live",
            &v2[..7]
        ));
    for (n, seen) in clients.stop().iter().enumerate() {
        assert_eq!(seen.failures, Vec::<String>::new(), "client {n}");
        assert_eq!(changes(seen), [v2.as_str()], "client {n}");
    }
    assert_eq!(active("app@a.service"), "inactive");
    assert_eq!(active("app@b.service"), "active");

    let status = setup
        .public
        .ats(&["status", "--repo", setup.repo.to_str().unwrap()]);
    status
        .success()
        .stdout_has("(app@b.service)")
        .stdout_has("the live slot");
}

/// The lines after the header line that starts with `header`, up to the next `## ` header.
fn section(text: &str, header: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header));
    assert!(lines.next().is_some(), "no `{header}` in:\n{text}");
    let body: Vec<&str> = lines.take_while(|l| !l.starts_with("## ")).collect();
    body.join("\n") + "\n"
}
