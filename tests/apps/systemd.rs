//! gunicorn and a worker under a real systemd, pushed to over SSH by a user whose only
//! privilege is the shipped sudoers rule; a graceful reload under load; Django with SQLite;
//! the processes check alone catching the reload trap.

use crate::support::apps::*;
use crate::support::system::{Public, SshSetup, User};
use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// gunicorn (`app.service`) and a worker (`app-worker.service`) under a systemd of their own,
/// the user `deployer` allowed by the shipped sudoers rule to restart them, pushing over SSH.
struct SystemdApp {
    setup: SshSetup,
    systemd: Systemd,
    _sudoers: Sudoers,
    port: u16,
    units: std::path::PathBuf,
    config: String,
    clone: Clone,
}

fn app_unit(user: &str, root: &Path, port: u16, chdir: bool) -> String {
    let chdir = if chdir {
        format!(" --chdir {}/current", root.display())
    } else {
        String::new()
    };
    format!(
        "[Unit]\nDefaultDependencies=no\n[Service]\nUser={user}\nGroup={user}\nWorkingDirectory={root}/current\n\
         ExecStart={root}/current/.venv/bin/gunicorn -b 127.0.0.1:{port} --workers 2 --graceful-timeout 10{chdir} wsgi:application\n\
         ExecReload=/bin/kill -s HUP $MAINPID\nKillMode=mixed\n",
        root = root.display()
    )
}

impl SystemdApp {
    fn start() -> SystemdApp {
        let public = Public::new();
        let user = User::create();
        let root = user.home.join("app");
        let port = closed_port();
        let units = public.path().join("units");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(
            units.join("app.service"),
            app_unit(&user.name, &root, port, false),
        )
        .unwrap();
        std::fs::write(
            units.join("app-worker.service"),
            format!(
                "[Unit]\nDefaultDependencies=no\n[Service]\nUser={user}\nGroup={user}\nWorkingDirectory={root}/current\n\
                 Environment=WORKER_STATUS={root}/shared/worker-status\nExecStart={root}/current/.venv/bin/python worker.py\n",
                user = user.name,
                root = root.display()
            ),
        )
        .unwrap();
        let systemd = Systemd::boot(&units);
        let sudoers = Sudoers::install_contrib(&user.name);
        let config = example_config(
            "systemd-gunicorn.toml",
            &[
                ("/home/deployer/app", root.to_str().unwrap()),
                ("127.0.0.1:8000", &format!("127.0.0.1:{port}")),
            ],
        );
        let uid = user.uid();
        let setup = SshSetup::with(public, user, "post-receive", &config, Some(systemd.pid));
        let env_file = write_env_file(&setup.root, None);
        std::os::unix::fs::chown(&env_file, Some(uid), None).unwrap();
        let clone = setup.clone();
        copy_sample_app(&clone);
        SystemdApp {
            setup,
            systemd,
            _sudoers: sudoers,
            port,
            units,
            config,
            clone,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The example config with a `reload` of the web app only (the worker has no graceful
    /// reload).
    fn reload_config(&self) -> String {
        self.config
            .replace(
                "systemctl = [\"app.service\", \"app-worker.service\"]",
                "systemctl = [\"app.service\"]",
            )
            .replace(
                "systemctl_action = \"restart\"",
                "systemctl_action = \"reload\"",
            )
    }

    fn use_config(&self, config: &str) {
        std::fs::write(self.setup.repo.join("ats-hook.toml"), config).unwrap();
    }

    fn push(&self) -> Run {
        let mut cmd = command("git", &self.clone.dir);
        cmd.args(["push", "staging", "main"])
            .current_dir(&self.clone.dir)
            .env("GIT_SSH_COMMAND", self.setup.ssh());
        run(&mut cmd, "git push staging main (over ssh)")
    }

    fn worker_runs(&self, commit: &str) {
        let status = self.setup.root.join("shared/worker-status");
        wait_for(
            "the worker to run the new release",
            Duration::from_secs(30),
            || std::fs::read_to_string(&status).is_ok_and(|t| t.trim() == commit),
        );
    }

    /// The first deploy: `systemctl restart` starts both units.
    fn first_deploy(&self) -> String {
        let v1 = self.clone.commit("first version");
        let push = self.push();
        push.success()
            .stderr_has("restart: sudo systemctl restart app.service")
            .stderr_has("restart: sudo systemctl restart app-worker.service")
            .stderr_has("health: ok after");
        assert_eq!(get(&self.url()).unwrap().trim(), v1);
        self.worker_runs(&v1);
        v1
    }
}

#[test]
fn systemd_gunicorn_and_worker_over_ssh_with_sudo_and_the_reload_trap() {
    let app = SystemdApp::start();
    let v1 = app.first_deploy();
    let history = std::fs::read_to_string(app.setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    assert!(
        history.contains("\"pusher\":\"ats-hook-deploy@"),
        "{history}"
    );
    // The deploy user can restart those units and nothing else.
    let mut stop = app.systemd.nsenter(&[
        "su",
        "-s",
        "/bin/sh",
        "-c",
        "sudo -n systemctl stop app.service",
        &app.setup.user.name,
    ]);
    run(&mut stop, "sudo systemctl stop, as the deploy user")
        .failure()
        .stderr_has("sudo: a password is required");
    assert_eq!(get(&app.url()).unwrap().trim(), v1, "the app was stopped");

    // The trap: a reload (HUP) of gunicorn started in `current` keeps serving the old release.
    app.use_config(&app.reload_config());
    app.clone.write(
        "app.py",
        &std::fs::read_to_string(app.clone.dir.join("app.py"))
            .unwrap()
            .replace("small Flask", "small, reloaded Flask"),
    );
    let v2 = app.clone.commit("second version");
    let push = app.push();
    push.success()
        .stderr_has("restart: sudo systemctl reload app.service")
        .stderr_has(&format!("without `{v2}` in the body"))
        .stderr_has(&format!(
            "The app still serves the previous commit {}",
            &v1[..7]
        ))
        .stderr_has("`systemctl_action = \"restart\"`")
        .stderr_has(&format!(
            "deploy FAILED at health check; switched back, {} is live again",
            &v1[..7]
        ));
    assert_eq!(get(&app.url()).unwrap().trim(), v1);

    // The documented config, a restart, serves the new commit; the worker follows.
    app.use_config(&app.config);
    let v3 = app.clone.commit_file("VERSION", "3");
    app.push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    assert_eq!(get(&app.url()).unwrap().trim(), v3);
    app.worker_runs(&v3);
}

#[test]
fn a_graceful_reload_deploy_under_load_fails_no_request() {
    let app = SystemdApp::start();
    app.first_deploy();
    // The other documented config: gunicorn with --chdir, so a graceful reload follows `current`.
    std::fs::write(
        app.units.join("app.service"),
        app_unit(&app.setup.user.name, &app.setup.root, app.port, true),
    )
    .unwrap();
    app.systemd.systemctl(&["daemon-reload"]).success();
    app.systemd.systemctl(&["restart", "app.service"]).success();
    wait_for_body(&app.url(), "\n", Duration::from_secs(30));
    // The worker has no graceful reload: this deploy reloads the web app only.
    app.use_config(&app.reload_config());

    let load = Load::start(vec![app.url()]);
    std::thread::sleep(Duration::from_millis(300));
    let v2 = app.clone.commit_file("VERSION", "2");
    let push = app.push();
    std::thread::sleep(Duration::from_millis(500));
    let served = load.stop();
    let (requests, failures) = (served.requests(), &served.failures);
    println!(
        "zero downtime: {requests} requests during the deploy, {} failed, longest {:?}",
        failures.len(),
        served.longest
    );
    push.success()
        .stderr_has("restart: sudo systemctl reload app.service")
        .stderr_has("health: ok after");
    assert!(requests > 50, "too few requests to tell: {requests}");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(get(&app.url()).unwrap().trim(), v2);
}

#[test]
fn django_with_sqlite_in_shared_migrations_static_files_and_gunicorn() {
    let server = Server::new();
    let root = server.root.clone();
    let port = closed_port();
    let database = root.join("shared/db.sqlite3");
    let env_file = write_env_file(&root, None);
    std::fs::write(
        &env_file,
        format!(
            "{}DJANGO_SECRET_KEY=test-only-secret\nDJANGO_DATABASE={}\n",
            std::fs::read_to_string(&env_file).unwrap(),
            database.display()
        ),
    )
    .unwrap();
    let example = example_config(
        "django-gunicorn.toml",
        &[
            ("/srv/django-app", root.to_str().unwrap()),
            ("127.0.0.1:8000", &format!("127.0.0.1:{port}")),
        ],
    );
    // gunicorn runs here as a plain process, not a unit: HUP it through its pidfile.
    let (steps, rest) = example.split_once("[restart]").unwrap();
    let health = &rest[rest.find("[health]").unwrap()..];
    let config = format!(
        "{steps}[restart]\nsignal = {{ pidfile = \"shared/gunicorn.pid\", signal = \"HUP\" }}\n\n{health}"
    );
    // The first deploy comes before gunicorn runs: nothing to restart or probe yet.
    server.config(steps);
    let clone = server.clone("work");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/django-app"),
        &clone.dir,
    );
    let v1 = clone.commit("a Django app");
    clone
        .push()
        .success()
        .stderr_has("install: building .venv")
        .stderr_has("Applying notes.0001_initial... OK");
    assert!(database.is_file(), "the database is not in shared/");
    assert!(server
        .root
        .join("current/static/admin/css/base.css")
        .is_file());

    let mut gunicorn = Command::new(root.join("current/.venv/bin/gunicorn"));
    gunicorn
        .args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "2"])
        .arg("--chdir")
        .arg(root.join("current"))
        .arg("--pid")
        .arg(root.join("shared/gunicorn.pid"))
        .arg("mysite.wsgi")
        .current_dir(&root)
        .env("DJANGO_SECRET_KEY", "test-only-secret")
        .env("DJANGO_DATABASE", &database)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _gunicorn = ChildGuard(gunicorn.spawn().unwrap());
    let url = |path: &str| format!("http://127.0.0.1:{port}/{path}");
    wait_for_body(&url("version"), &v1, Duration::from_secs(30));
    assert_eq!(get(&url("notes")).unwrap().trim(), "id,text");

    // A model change with its migration: the virtualenv is reused, the migration runs before
    // the switch, gunicorn reloads into the new release.
    server.config(&config);
    wait_for("gunicorn's pidfile", Duration::from_secs(10), || {
        root.join("shared/gunicorn.pid").exists()
    });
    clone.write(
        "notes/models.py",
        "from django.db import models\n\n\nclass Note(models.Model):\n    text = models.TextField()\n    pinned = models.BooleanField(default=False)\n",
    );
    clone.write(
        "notes/migrations/0002_pinned.py",
        "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"notes\", \"0001_initial\")]\n    operations = [migrations.AddField(\"note\", \"pinned\", models.BooleanField(default=False))]\n",
    );
    let v2 = clone.commit("notes can be pinned");
    clone
        .push()
        .success()
        .stderr_has("install: reused .venv")
        .stderr_has("Applying notes.0002_pinned... OK")
        .stderr_has("health: ok after");
    assert_eq!(get(&url("version")).unwrap().trim(), v2);
    assert_eq!(get(&url("notes")).unwrap().trim(), "id,text,pinned");

    // A migration that fails: the deploy stops before the switch, the site serves v2 on its
    // schema, with its own static files.
    clone.write(
        "notes/migrations/0003_broken.py",
        "from django.db import migrations\n\n\ndef fail(apps, schema_editor):\n    raise RuntimeError(\"data migration failed\")\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"notes\", \"0002_pinned\")]\n    operations = [migrations.RunPython(fail)]\n",
    );
    clone.commit("a data migration that fails");
    clone
        .push()
        .success()
        .stderr_has("RuntimeError: data migration failed")
        .stderr_has(&format!(
            "deploy FAILED at step migrate (exit 1); {} is still live",
            &v2[..7]
        ));
    assert_eq!(get(&url("version")).unwrap().trim(), v2);
    assert_eq!(get(&url("notes")).unwrap().trim(), "id,text,pinned");
    assert!(server
        .root
        .join("current/static/admin/css/base.css")
        .is_file());
}

/// `[health] processes` alone (no URL) catches the reload trap under a real systemd: after a
/// reload of gunicorn started with `WorkingDirectory=.../current`, its workers still work in the
/// old release, and the check names them; a restart passes.
#[test]
fn the_processes_check_alone_catches_the_reload_trap() {
    let app = SystemdApp::start();
    let v1 = app.first_deploy();
    let processes_only = |config: &str| -> String {
        let health = config
            .find("[health]")
            .expect("the example has a health check");
        format!(
            "{}[health]\nprocesses = [\"app.service\"]\ntimeout = \"10s\"\ninterval = \"250ms\"\nsettle = \"2s\"\n",
            &config[..health]
        )
    };
    app.use_config(&processes_only(&app.reload_config()));
    app.clone.commit_file("VERSION", "2");
    app.push()
        .success()
        .stderr_has("restart: sudo systemctl reload app.service")
        .stderr_has("(gunicorn) of `app.service` runs in release ")
        .stderr_has("a reload keeps the directory a server resolved when it started")
        .stderr_has("deploy FAILED at health check; switched back");
    assert_eq!(get(&app.url()).unwrap().trim(), v1);

    app.use_config(&processes_only(&app.config));
    let v3 = app.clone.commit_file("VERSION", "3");
    app.push()
        .success()
        .stderr_has("of `app.service` in ")
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    assert_eq!(get(&app.url()).unwrap().trim(), v3);
}
