//! The restart after the switch: a signal to the pidfile's process, a start when there is
//! none, a touch the app sees, and a failing restart that switches back.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;
use std::time::Duration;

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
