//! The flows our users run today, end to end, with the real parts: a Flask app with a Makefile,
//! uWSGI and PostgreSQL; gunicorn and a worker under a real systemd, pushed to over SSH by a
//! user whose only privilege is the shipped sudoers rule; production tags, each on the
//! virtualenv of its requirements; and a deploy under load that fails no request. The configs
//! are the ones in contrib/examples/.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::apps::*;
use crate::support::system::{Public, SshSetup, User};
use crate::support::*;

/// shared/.env for the sample app: where pip finds its wheels, and the database.
fn write_env_file(root: &Path, database_url: Option<&str>) -> std::path::PathBuf {
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut text = format!(
        "PIP_NO_INDEX=1\nPIP_FIND_LINKS={}\n",
        wheelhouse().display()
    );
    if let Some(url) = database_url {
        text.push_str(&format!("DATABASE_URL={url}\n"));
    }
    let path = shared.join(".env");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flask_with_make_uwsgi_touch_reload_and_postgres() {
    let pg = Postgres::start();
    let server = Server::new();
    let root = server.root.clone();
    let port = closed_port();
    let env_file = write_env_file(&root, Some(&pg.url()));
    let config = example_config(
        "flask-uwsgi.toml",
        &[
            ("/srv/app", root.to_str().unwrap()),
            ("127.0.0.1:8000", &format!("127.0.0.1:{port}")),
        ],
    );
    // The first deploy comes before uWSGI runs: nothing to probe yet.
    server.config(config.split("[health]").next().unwrap());
    let clone = server.clone("work");
    copy_sample_app(&clone);
    let v1 = clone.commit("first version");
    let push = clone.push();
    push.success()
        .stderr_has("upgrade-db | applying 0001_items.sql")
        .stderr_has(&format!("ats-hook: deployed {} (main)", &v1[..7]));
    let uwsgi = Uwsgi::start(port, &root, &env_file, &server.path().join("uwsgi.log"));
    wait_for_body(&uwsgi.url(""), &v1, Duration::from_secs(30));
    assert_eq!(get(&uwsgi.url("schema")).unwrap().trim(), "id,name");

    // A migration and a touch: uWSGI reloads into the new release, which the health check sees.
    server.config(&config);
    clone.write(
        "migrations/0002_price.sql",
        "alter table items add column price numeric;\n",
    );
    let v2 = clone.commit("items have a price");
    let push = clone.push();
    push.success()
        .stderr_has("install-deps: reused .venv (requirements.txt, Makefile and `/usr/bin/python3 --version` unchanged since ")
        .stderr_has("upgrade-db | applying 0002_price.sql")
        .stderr_has("restart: touched `wsgi.py`")
        .stderr_has("health: ok after");
    assert!(
        push.summary()
            .starts_with(&format!("ats-hook: deployed {}", &v2[..7])),
        "{}",
        push.summary()
    );
    assert_eq!(get(&uwsgi.url("")).unwrap().trim(), v2);
    assert_eq!(get(&uwsgi.url("schema")).unwrap().trim(), "id,name,price");

    // A migration that fails: the old release keeps serving, the schema is what it expects.
    clone.write(
        "migrations/0003_tags.sql",
        "alter table item_tags add column weight int;\n",
    );
    clone.commit("a migration against a table that does not exist");
    let push = clone.push();
    push.success()
        .stderr_has("0003_tags.sql failed: relation \"item_tags\" does not exist")
        .stderr_has(&format!(
            "deploy FAILED at step upgrade-db (exit 2); {} is still live",
            &v2[..7]
        ));
    assert_eq!(get(&uwsgi.url("")).unwrap().trim(), v2);
    assert_eq!(get(&uwsgi.url("schema")).unwrap().trim(), "id,name,price");
    assert_eq!(
        pg.query("select string_agg(name, ',' order by name) from schema_migrations"),
        "0001_items.sql,0002_price.sql"
    );
}

#[test]
fn production_deploys_tags_only_each_on_the_virtualenv_of_its_requirements() {
    let server = Server::new();
    let root = server.root.clone();
    write_env_file(&root, None);
    server.config(&example_config(
        "tagged-releases.toml",
        &[("/srv/app-production", root.to_str().unwrap())],
    ));
    let clone = server.clone("work");
    copy_sample_app(&clone);
    clone.commit("first version");
    clone
        .push()
        .success()
        .stderr_has("ignored `refs/heads/main`");
    assert!(server.releases().is_empty());
    clone.git(&["tag", "v2-preview"]).success();
    clone
        .push_args(&["v2-preview"])
        .success()
        .stderr_has("ignored `refs/tags/v2-preview`");

    let mut deployed = Vec::new();
    for tag in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        clone.write("VERSION", tag);
        clone.commit(&format!("release {tag}"));
        clone.git(&["tag", "-a", "-m", tag, tag]).success();
        let push = clone.push_args(&[tag]);
        push.success()
            .stderr_has("check | flask 3.")
            .stderr_has(&format!("({tag})"));
        if deployed.is_empty() {
            push.stderr_has("venv: building .venv");
        } else {
            push.stderr_has(&format!("venv: reused .venv (requirements.txt and `/usr/bin/python3 --version` unchanged since {})", deployed[0]));
        }
        let live = server.live().unwrap();
        assert!(server.root.join("current/.venv/bin/python").exists());
        assert_eq!(server.last_record()["ref"], format!("refs/tags/{tag}"));
        deployed.push(live);
    }
    // keep_releases = 3: the oldest release went; the virtualenv it built stays, because the
    // releases kept run on it.
    let mut kept = deployed[1..].to_vec();
    kept.sort();
    assert_eq!(server.releases(), kept);
    assert_eq!(server.builds("venv"), BTreeSet::from([deployed[0].clone()]));
    assert_eq!(server.live_file("VERSION"), "1.3.0");

    // A tag with other requirements gets its own; the previous tags keep theirs.
    clone.write(
        "requirements.txt",
        &format!(
            "{}itsdangerous\n",
            std::fs::read_to_string(clone.dir.join("requirements.txt")).unwrap()
        ),
    );
    clone.commit("release 1.4.0");
    clone.git(&["tag", "-a", "-m", "1.4.0", "1.4.0"]).success();
    clone
        .push_args(&["1.4.0"])
        .success()
        .stderr_has("venv: building .venv");
    let live = server.live().unwrap();
    assert_eq!(server.build_of(&live, "venv", ".venv"), live);
    assert_eq!(server.build_of(&deployed[3], "venv", ".venv"), deployed[0]);
}

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
