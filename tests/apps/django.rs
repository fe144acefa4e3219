//! A Django app as a new user runs it: the config template as written, gunicorn started by the
//! first deploy and reloaded by the next ones without systemd, a server started inside a release
//! that ats-hook must not pull the folder from under, and old workers that must not answer a
//! health check for a broken release. Real gunicorn, real Django, real SQLite migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::apps::*;
use crate::support::*;

/// A deploy root set up for the sample Django app, and the gunicorn it ends up running.
struct DjangoSite {
    server: Server,
    clone: Clone,
    port: u16,
}

impl DjangoSite {
    /// The server with shared/.env written (the app reads it itself); nothing pushed yet.
    fn new() -> DjangoSite {
        let server = Server::new();
        let root = server.root.clone();
        std::fs::create_dir_all(root.join("shared")).unwrap();
        std::fs::write(
            root.join("shared/.env"),
            format!(
                "PIP_NO_INDEX=1\nPIP_FIND_LINKS={}\nDJANGO_SECRET_KEY=test-only-secret\nDJANGO_DATABASE={}\nGREETING=hello\n",
                wheelhouse().display(),
                root.join("shared/db.sqlite3").display()
            ),
        )
        .unwrap();
        let clone = server.clone("work");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/django-app"),
            &clone.dir,
        );
        DjangoSite {
            server,
            clone,
            port: closed_port(),
        }
    }

    /// The template the way `install` writes it, serving on this site's port.
    fn template(&self) -> String {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"),
        )
        .unwrap();
        assert!(text.contains("root = \"/srv/app\"") && text.contains("127.0.0.1:8000"));
        text.replacen("root = \"/srv/app\"", "root = \"ROOT\"", 1)
            .replace("127.0.0.1:8000", &format!("127.0.0.1:{}", self.port))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn root(&self) -> &Path {
        &self.server.root
    }

    /// gunicorn's master, from its pidfile.
    fn master(&self) -> i32 {
        let text = std::fs::read_to_string(self.root().join("shared/gunicorn.pid")).unwrap();
        text.trim().parse().unwrap()
    }

    /// Kills gunicorn, master and workers: the process group the daemon runs in.
    fn kill_gunicorn(pid: i32) -> nix::Result<()> {
        let group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))?;
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL)
    }

    /// What process `pid` has as its working directory.
    fn cwd_of(pid: i32) -> PathBuf {
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap()
    }

    fn release_dir(&self, id: &str) -> PathBuf {
        self.root()
            .join("releases")
            .join(id)
            .canonicalize()
            .unwrap()
    }
}

impl Drop for DjangoSite {
    /// gunicorn daemonizes into a session of its own, with its workers in its group.
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(self.root().join("shared/gunicorn.pid")) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let _ = DjangoSite::kill_gunicorn(pid);
            }
        }
    }
}

#[test]
fn the_template_as_written_starts_gunicorn_then_reloads_it_with_a_clean_environment() {
    let site = DjangoSite::new();
    site.server.config(&site.template());
    let v1 = site.clone.commit("a Django app");
    site.clone
        .push()
        .success()
        .stderr_has("install: building .venv")
        .stderr_has("Applying notes.0001_initial... OK")
        .stderr_has("restart: no pidfile")
        .stderr_has("; starting the app")
        .stderr_has("health: ok after");
    assert_eq!(get(&site.url("")).unwrap(), "hello\n");
    // The release knows its commit from REVISION, written by ats-hook.
    assert_eq!(get(&site.url("version")).unwrap(), format!("{v1}\n"));
    let master = site.master();
    let live = site.server.live().unwrap();
    assert_eq!(DjangoSite::cwd_of(master), site.release_dir(&live));
    // The clean environment: no secret of the env file, no ATS_* variable in the server's.
    let environ = std::fs::read(format!("/proc/{master}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("DJANGO_SECRET_KEY"), "{environ}");
    assert!(!environ.contains("ATS_"), "{environ}");
    assert!(!environ.contains("PIP_FIND_LINKS"), "{environ}");

    // An edit of shared/.env and a new commit: HUP, and the new workers read both.
    let env_file = site.root().join("shared/.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    std::fs::write(&env_file, env.replace("GREETING=hello", "GREETING=bonjour")).unwrap();
    site.clone.write("notes/__init__.py", "# v2\n");
    let v2 = site.clone.commit("v2");
    site.clone
        .push()
        .success()
        .stderr_has(&format!("restart: sent SIGHUP to pid {master}"))
        .stderr_has("health: ok after");
    assert_eq!(get(&site.url("version")).unwrap(), format!("{v2}\n"));
    assert_eq!(get(&site.url("")).unwrap(), "bonjour\n");
    assert!(alive(master), "the reload ended gunicorn's master");
    // Its working directory followed the switch (it was started with --chdir .../current).
    let live = site.server.live().unwrap();
    assert_eq!(DjangoSite::cwd_of(master), site.release_dir(&live));

    // gunicorn dies (a crash, a reboot): the pidfile names a process that is gone, and the
    // next deploy starts it again instead of failing on the signal.
    DjangoSite::kill_gunicorn(master).unwrap();
    wait_for("gunicorn to die", Duration::from_secs(10), || {
        get(&site.url("")).is_err()
    });
    site.clone.write("notes/__init__.py", "# v3\n");
    let v3 = site.clone.commit("v3");
    site.clone
        .push()
        .success()
        .stderr_has(&format!("restart: pid {master} from"))
        .stderr_has("is not running (the stale pidfile is removed); starting the app")
        .stderr_has("health: ok after");
    assert_eq!(get(&site.url("version")).unwrap(), format!("{v3}\n"));
    assert_ne!(site.master(), master);
}

/// Restart commands used to run inside the new release, so a server they started kept that
/// release as its working directory for good (gunicorn started there without `--chdir` to
/// `current` stays in it through every reload). Recycling or pruning that release pulled the
/// folder from under the running master, and its next reload ended it while the deploy said
/// "succeeded". Here the start command goes into the release itself, the way the old default
/// did: ats-hook must leave that release alone for as long as the master runs there.
#[test]
fn a_server_started_inside_a_release_keeps_it_and_lives_through_every_later_deploy() {
    let site = DjangoSite::new();
    let pinned_start = format!(
        "cd -P current && exec .venv/bin/gunicorn --daemon --pid {root}/shared/gunicorn.pid --error-logfile {root}/shared/log/gunicorn.log --bind 127.0.0.1:{port} --workers 2 mysite.wsgi",
        root = site.root().display(),
        port = site.port
    );
    let config = site
        .template()
        .replace("keep_releases = 5", "keep_releases = 2")
        .replace("settle = \"10s\"", "settle = \"1s\"");
    let (head, tail) = config.split_once("start = \"").unwrap();
    let tail = &tail[tail.find("\"\n").unwrap() + 2..];
    site.server
        .config(&format!("{head}start = '{pinned_start}'\n{tail}"));
    let v1 = site.clone.commit("a Django app");
    site.clone.push().success().stderr_has("starting the app");
    let first = site.server.live().unwrap();
    let master = site.master();
    let pinned = site.release_dir(&first);
    assert_eq!(DjangoSite::cwd_of(master), pinned);

    let mut said_in_use = false;
    for n in 2..=6 {
        site.clone.write("notes/__init__.py", &format!("# v{n}\n"));
        site.clone.commit(&format!("v{n}"));
        let push = site.clone.push();
        push.success()
            .stderr_has(&format!("restart: sent SIGHUP to pid {master}"));
        if n == 2 {
            // The health check waited for the old release's processes, and named the one
            // that stays: it will serve the old code.
            push.stderr_has(&format!("pid {master} (gunicorn, working directory)"))
                .stderr_has(&format!("still in the previous release {first}"));
        }
        said_in_use |= push
            .stderr()
            .contains(&format!("{first}: in use by pid {master} (gunicorn"));
        assert!(alive(master), "push {n} ended gunicorn's master");
        assert_eq!(get(&site.url("")).unwrap(), "hello\n", "after push {n}");
        // The master's folder is the first release still, whole and unchanged.
        assert_eq!(DjangoSite::cwd_of(master), pinned);
        assert_eq!(
            std::fs::read_to_string(pinned.join("REVISION")).unwrap(),
            format!("{v1}\n")
        );
    }
    assert!(
        said_in_use,
        "no push said why {first} stayed on disk beyond keep_releases"
    );
    // Two kept, plus the one the master works in.
    let releases = std::fs::read_dir(site.root().join("releases"))
        .unwrap()
        .count();
    assert_eq!(releases, 3);
}

/// After a HUP, gunicorn's old workers answer until the master has reloaded and replaces them.
/// A release whose front page is broken must not pass the health check on their answers: the
/// check waits for the previous release's processes to go, and the new code answers the probe.
#[test]
fn old_workers_do_not_pass_the_health_check_of_a_broken_release() {
    let site = DjangoSite::new();
    // The app's own gunicorn config file, which gunicorn reads again on each reload before it
    // replaces its workers.
    let config = site
        .template()
        .replace("passes = 2", "passes = 1")
        .replace("timeout = \"30s\"", "timeout = \"5s\"")
        .replace(
            "gunicorn --daemon",
            "gunicorn --daemon --config \\\"$PWD/current/gunicorn.conf.py\\\"",
        );
    site.server.config(&config);
    site.clone.write("gunicorn.conf.py", "timeout = 30\n");
    let v1 = site.clone.commit("a Django app");
    site.clone.push().success().stderr_has("health: ok after");
    let master = site.master();

    site.clone.write(
        "notes/views.py",
        &std::fs::read_to_string(site.clone.dir.join("notes/views.py"))
            .unwrap()
            .replace(
                "    return HttpResponse(settings.GREETING",
                "    raise RuntimeError(\"broken front page\")\n    return HttpResponse(settings.GREETING",
            ),
    );
    // A config that takes two seconds to load: the old workers go on serving the old code
    // meanwhile, as they do while a master loads a large config or runs reload hooks.
    site.clone.write(
        "gunicorn.conf.py",
        "import time\n\ntime.sleep(2)\ntimeout = 30\n",
    );
    site.clone.commit("a broken front page");
    let push = site.clone.push();
    push.success()
        .stderr_has("health check failed")
        .stderr_has("HTTP 500");
    assert_eq!(
        push.summary(),
        format!(
            "ats-hook: deploy FAILED at health check; switched back, {} is live again",
            &v1[..7]
        )
    );
    // The previous release is served again, by the same master.
    wait_for_body(&site.url("version"), &v1, Duration::from_secs(20));
    assert_eq!(get(&site.url("")).unwrap(), "hello\n");
    assert!(alive(master));
}
