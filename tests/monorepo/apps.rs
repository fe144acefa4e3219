//! Several apps from one repository (`[apps.NAME]`): a backend, a static frontend built with
//! npm, a shared `libs/`. Each deploys only when its folders change; all go live together or
//! none does; each has its own history and rollback.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::{Path, PathBuf};

/// The monorepo's two apps, each probed by a server that reads its `current`.
struct Monorepo {
    server: Server,
    clone: Clone,
    backend: PathBuf,
    frontend: PathBuf,
    _backend_http: HttpServer,
    _frontend_http: HttpServer,
}

fn npm_cache() -> PathBuf {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm-cache");
    assert!(
        cache.is_dir(),
        "{} is missing: tests/run fills npm's cache",
        cache.display()
    );
    cache
}

fn config(m: &Monorepo, backend_port: u16, frontend_port: u16, health_timeout: &str) -> String {
    format!(
        r#"
[apps.backend.deploy]
root = "{backend}"
path = "backend"
paths = ["libs/common"]
keep_releases = 3
[[apps.backend.step]]
name = "check"
run = "python3 app.py"
[apps.backend.health]
url = "http://127.0.0.1:{backend_port}/REVISION"
expect_body = "{{commit}}"
interval = "100ms"
timeout = "{health_timeout}"

[apps.frontend.deploy]
root = "{frontend}"
path = "frontend"
paths = ["libs/common"]
keep_releases = 3
[apps.frontend.env]
npm_config_cache = "{cache}"
npm_config_audit = "false"
npm_config_fund = "false"
npm_config_update_notifier = "false"
[[apps.frontend.step]]
name = "npm-ci"
run = "npm ci --offline"
inputs = ["package.json", "package-lock.json"]
outputs = ["node_modules"]
key = "node --version"
timeout = "5m"
[[apps.frontend.step]]
name = "build"
run = "npm run build"
[apps.frontend.health]
url = "http://127.0.0.1:{frontend_port}/dist/index.html"
expect_body = "{{commit}}"
interval = "100ms"
timeout = "{health_timeout}"
"#,
        backend = m.backend.display(),
        frontend = m.frontend.display(),
        cache = npm_cache().display(),
    )
}

fn monorepo(gate: bool, health_timeout: &str) -> Monorepo {
    let server = Server::new();
    if gate {
        server.gate();
    }
    let backend = server.path().join("backend-app");
    let frontend = server.path().join("frontend-app");
    let backend_http = HttpServer::start("files", Some(&backend.join("current")), server.path());
    let frontend_http = HttpServer::start("files", Some(&frontend.join("current")), server.path());
    let clone = server.clone("work");
    files::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monorepo"),
        &clone.dir,
    );
    clone.commit("the monorepo");
    let m = Monorepo {
        server,
        clone,
        backend,
        frontend,
        _backend_http: backend_http,
        _frontend_http: frontend_http,
    };
    let text = config(
        &m,
        m._backend_http.port,
        m._frontend_http.port,
        health_timeout,
    );
    m.server.config(&text);
    m
}

impl Monorepo {
    fn live(&self, root: &Path) -> String {
        std::fs::read_link(root.join("current"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The live releases of the backend and the frontend.
    fn lives(&self) -> (String, String) {
        (self.live(&self.backend), self.live(&self.frontend))
    }

    fn records(&self, root: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(root.join(".ats-hook/deploys.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn page(&self) -> String {
        std::fs::read_to_string(self.frontend.join("current/dist/index.html")).unwrap()
    }
}

#[test]
fn each_app_deploys_only_when_its_folders_change() {
    let m = monorepo(false, "10s");
    let first = m.clone.head();
    let push = m.clone.push();
    push.success()
        .stderr_has("backend: deploying")
        .stderr_has("frontend:  npm-ci | added 1 package")
        .stderr_has("frontend:   build | built dist/index.html");
    let short = &first[..7];
    assert_eq!(
        push.summary(),
        format!("ats-hook: push deployed: backend deployed {short}, frontend deployed {short}")
    );
    // The backend's release is its folder, with the shared library beside its code.
    let run = run(
        std::process::Command::new("python3")
            .arg("app.py")
            .current_dir(m.backend.join("current")),
        "the backend",
    );
    assert_eq!(
        run.stdout().trim(),
        format!("backend {first} with common v1")
    );
    assert!(m
        .page()
        .contains(&format!("frontend {first} with common v1")));
    assert!(!m.frontend.join("current/app.py").exists());

    // Only the frontend: the backend stays as it is.
    let backend_live = m.live(&m.backend);
    let front = m.clone.commit_file("frontend/about.txt", "about\n");
    let push = m.clone.push();
    push.success();
    assert_eq!(
        push.summary(),
        format!(
            "ats-hook: push deployed: backend unchanged, frontend deployed {}",
            &front[..7]
        )
    );
    assert_eq!(m.live(&m.backend), backend_live);
    assert!(m.page().contains(&front));
    assert_eq!(m.records(&m.backend).last().unwrap()["state"], "unchanged");

    // Only docs: nothing deploys.
    let frontend_live = m.live(&m.frontend);
    m.clone.commit_file("docs/index.md", "# more docs\n");
    let push = m.clone.push();
    push.success()
        .stderr_has("backend: backend and libs/common unchanged at")
        .stderr_lacks("deploying");
    assert_eq!(
        push.summary(),
        "ats-hook: nothing to deploy: backend unchanged, frontend unchanged"
    );
    assert_eq!(m.lives(), (backend_live.clone(), frontend_live.clone()));

    // The shared library: both deploy.
    let libs = m.clone.commit_file("libs/common/banner.txt", "common v2\n");
    let push = m.clone.push();
    push.success();
    let short = &libs[..7];
    assert_eq!(
        push.summary(),
        format!("ats-hook: push deployed: backend deployed {short}, frontend deployed {short}")
    );
    assert!(m
        .page()
        .contains(&format!("frontend {libs} with common v2")));
    assert_ne!(m.live(&m.backend), backend_live);

    // Each app's own status, history and plan.
    m.server
        .ats(&["status"])
        .success()
        .stdout_has("app backend:")
        .stdout_has("app frontend:")
        .stdout_has(&format!("({} of main)", short));
    let check = m.server.ats(&["check"]);
    check
        .success()
        .stdout_has("2 apps, deployed in this order: backend, frontend")
        .stdout_has("would deploy, pushed alone:");
    let plan = check.stdout();
    let line = |sha: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(&sha[..7]))
            .unwrap_or_else(|| panic!("no line for {sha} in:\n{plan}"))
            .to_string()
    };
    assert!(line(&libs).ends_with("backend, frontend"), "{plan}");
    assert!(line(&front).ends_with("  frontend"), "{plan}");
    m.server
        .ats(&["releases"])
        .failure()
        .stderr_has("holds several apps (backend, frontend): name one with `--app NAME`");
    m.server
        .ats(&["releases", "--app", "frontend"])
        .success()
        .stdout_has(&m.live(&m.frontend));

    // Rollback of one app: the frontend goes back to the release before, the backend stays.
    let backend_now = m.live(&m.backend);
    m.server
        .ats(&["rollback", "--app", "frontend"])
        .success()
        .stderr_has("frontend: ");
    assert!(m
        .page()
        .contains(&format!("frontend {front} with common v1")));
    assert_eq!(m.live(&m.backend), backend_now);
}

/// Gate mode: the frontend's build fails, so the push is rejected and no app goes live, the
/// backend's ready release included.
#[test]
fn a_failing_app_rejects_the_push_and_no_app_changes() {
    let m = monorepo(true, "10s");
    m.clone.push().success();
    let (backend_live, frontend_live) = m.lives();
    let tip = m.server.tip("refs/heads/main");
    m.clone.write("backend/app.py", "print('backend v2')\n");
    m.clone.write("frontend/broken", "yes\n");
    m.clone.commit("break the frontend");
    let push = m.clone.push();
    push.failure()
        .stderr_has("frontend:   build | build failed: the frontend is broken")
        .stderr_has("backend: not switching: app `frontend` of this push failed")
        .stderr_has("backend: deploy NOT SWITCHED: app frontend of this push failed");
    assert!(
        push.summary().starts_with(
            "ats-hook: push FAILED, nothing of it is live: backend failed, frontend failed"
        ),
        "{}",
        push.summary()
    );
    assert_eq!(m.lives(), (backend_live, frontend_live));
    assert_eq!(m.server.tip("refs/heads/main"), tip);
    let record = m.records(&m.backend).last().unwrap().clone();
    assert_eq!(record["state"], "failed");
    assert_eq!(
        record["error"],
        "not switched: app `frontend` of the same push failed"
    );
    assert_eq!(
        m.records(&m.frontend).last().unwrap()["failed_step"],
        "build"
    );
}

/// The frontend goes live but its health check fails: it switches back, and so does the
/// backend, which had gone live before it.
#[test]
fn a_health_failure_of_one_app_switches_every_app_back() {
    let m = monorepo(false, "2s");
    m.clone.push().success();
    let (backend_live, frontend_live) = m.lives();
    m.clone.write("libs/common/banner.txt", "common v2\n");
    m.clone.write("frontend/stale", "yes\n");
    m.clone.commit("a frontend that serves a stale page");
    let push = m.clone.push();
    push.success()
        .stderr_has("frontend: deploy FAILED at health check; switched back")
        .stderr_has("ats-hook: backend: error: app `frontend` of this push failed once live: switching back")
        .stderr_has(&format!("backend: switched current back to {backend_live}"));
    assert!(
        push.summary()
            .starts_with("ats-hook: push FAILED, nothing of it is live: backend rolled-back, frontend rolled-back"),
        "{}",
        push.summary()
    );
    assert_eq!(m.lives(), (backend_live, frontend_live));
    assert!(m.page().contains("with common v1"));
    assert_eq!(
        m.records(&m.backend).last().unwrap()["state"],
        "rolled-back"
    );
}

/// Killed once both apps switched (in the frontend's step after the switch): each app's next
/// run finds a deploy that died after its switch and puts back what was live before the push,
/// then deploys as usual.
#[test]
fn a_push_killed_after_the_switches_is_undone_for_every_app() {
    let m = monorepo(false, "10s");
    m.clone.push().success();
    let (backend_live, frontend_live) = m.lives();
    let text = std::fs::read_to_string(m.server.bare.join("ats-hook.toml")).unwrap();
    let announce = format!(
        "[[apps.frontend.step]]\nname = \"announce\"\nafter_switch = true\ntimeout = \"10m\"\n\
         run = \"echo $PPID > {}; sleep 300\"\n[apps.frontend.health]",
        m.server.path().join("hook.pid").display()
    );
    m.server
        .config(&text.replacen("[apps.frontend.health]", &announce, 1));
    m.clone.write("libs/common/banner.txt", "common v2\n");
    let killed = m.clone.commit("both apps change");
    let (push, hook) = m
        .clone
        .spawn_push_until_pid(&m.server.path().join("hook.pid"));
    // Both switched by now.
    assert_ne!(m.lives(), (backend_live.clone(), frontend_live.clone()));
    send_signal(hook, nix::sys::signal::Signal::SIGKILL);
    let _ = push.wait_with_output().unwrap();
    let last = |root: &Path| m.records(root).last().unwrap()["state"].clone();
    assert_eq!(
        (last(&m.backend), last(&m.frontend)),
        ("switching".into(), "switching".into())
    );

    m.server.config(&text);
    m.clone.commit_file("docs/index.md", "# after the kill\n");
    let push = m.clone.push();
    push.success()
        .stderr_has(&format!(
            "ats-hook: backend: warning: the previous deploy, pid {hook}"
        ))
        .stderr_has(&format!("switching back to {backend_live}"))
        .stderr_has(&format!("switching back to {frontend_live}"));
    let states = |root: &Path| -> Vec<(String, String)> {
        m.records(root)
            .iter()
            .map(|r| {
                (
                    r["commit"].as_str().unwrap()[..7].to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for root in [&m.backend, &m.frontend] {
        assert!(
            states(root).contains(&(killed[..7].to_string(), "interrupted".to_string())),
            "{:?}",
            states(root)
        );
    }
    assert!(m.page().contains("with common v2"));
}

/// The backend's migration ran (on a real PostgreSQL), then the frontend's build failed: the
/// backend never goes live, and its `down` reverses the migration, so the live backend keeps
/// the schema it knows.
#[test]
fn a_ready_app_that_migrated_is_reversed_when_another_app_fails() {
    let pg = crate::support::apps::Postgres::start();
    let m = monorepo(true, "10s");
    let text = std::fs::read_to_string(m.server.bare.join("ats-hook.toml")).unwrap();
    let migrate = format!(
        "[[apps.backend.step]]\nname = \"migrate\"\nrun = \"sh migrate.sh\"\n\
         migrations = [\"migrations\"]\ndown = \"sh down.sh\"\n\
         [apps.backend.env]\nPGURL = \"{}\"\n[apps.backend.health]",
        pg.url()
    );
    m.server
        .config(&text.replacen("[apps.backend.health]", &migrate, 1));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema-app");
    for script in ["migrate.sh", "down.sh"] {
        m.clone.write(
            &format!("backend/{script}"),
            &std::fs::read_to_string(fixture.join(script)).unwrap(),
        );
    }
    m.clone
        .write(
            "backend/migrations/0001_items.sql",
            "CREATE TABLE items (id int);\n",
        )
        .write(
            "backend/migrations/down/0001_items.sql",
            "DROP TABLE items;\n",
        );
    m.clone.commit("a table");
    m.clone.push().success();
    let columns = || {
        pg.query(
            "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'items'",
        )
    };
    assert_eq!(columns(), "id");
    let lives = m.lives();

    m.clone
        .write(
            "backend/migrations/0002_price.sql",
            "ALTER TABLE items ADD COLUMN price int;\n",
        )
        .write(
            "backend/migrations/down/0002_price.sql",
            "ALTER TABLE items DROP COLUMN price;\n",
        )
        .write("frontend/broken", "yes\n");
    m.clone.commit("a price, and a broken frontend");
    m.clone
        .push()
        .failure()
        .stderr_has("backend: migrate | applying 0002_price.sql")
        .stderr_has("backend: migrate: reversing its migrations")
        .stderr_has("backend: migrate | reversing 0002_price.sql");
    assert_eq!(columns(), "id");
    assert_eq!(m.lives(), lives);
    let record = m.records(&m.backend).last().unwrap().clone();
    let steps: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["check", "migrate", "migrate (down)"]);
}

/// Two pushes at once: the second waits for the first's locks (every app's, taken in the
/// config's order, so neither waits on the other), then deploys both apps after it; what is
/// live at the end is the second push, in both apps.
#[test]
fn a_second_push_waits_for_every_app_of_the_first() {
    let m = monorepo(false, "10s");
    let text = std::fs::read_to_string(m.server.bare.join("ats-hook.toml")).unwrap();
    let gate = "run = \"if [ -e slow ]; then touch \\\"$ATS_DEPLOY_ROOT/first-started\\\"; while [ ! -e \\\"$ATS_DEPLOY_ROOT/go\\\" ]; do sleep 0.05; done; fi; npm run build\"\ntimeout = \"2m\"";
    m.server
        .config(&text.replacen("run = \"npm run build\"", gate, 1));
    m.clone.write("frontend/slow", "");
    let first = m.clone.commit("a slow frontend build");
    std::fs::remove_file(m.clone.dir.join("frontend/slow")).unwrap();
    m.clone.write("backend/app.py", "print('second')\n");
    let second = m.clone.commit("second");
    let push_first = m.clone.spawn_push(&[&format!("{first}:refs/heads/main")]);
    wait_for(
        "the first push's frontend build",
        std::time::Duration::from_secs(60),
        || m.frontend.join("first-started").exists(),
    );
    let push_second = m.clone.spawn_push(&[&format!("{second}:refs/heads/main")]);
    let lock = m.backend.join(".ats-hook/lock");
    wait_for(
        "the second push to wait",
        std::time::Duration::from_secs(10),
        || std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&first)),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(m.frontend.join("go"), "").unwrap();
    let first_out = push_first.wait_with_output().unwrap();
    let second_out = push_second.wait_with_output().unwrap();
    let first_err = String::from_utf8_lossy(&first_out.stderr);
    let second_err = String::from_utf8_lossy(&second_out.stderr);
    assert!(first_out.status.success() && second_out.status.success());
    assert!(
        first_err.contains(&format!(
            "push deployed: backend deployed {}, frontend deployed {}",
            &first[..7],
            &first[..7]
        )),
        "{first_err}"
    );
    assert!(
        second_err.contains("backend: waiting for the deploy lock held by pid"),
        "{second_err}"
    );
    assert!(
        second_err.contains(&format!(
            "push deployed: backend deployed {}, frontend deployed {}",
            &second[..7],
            &second[..7]
        )),
        "{second_err}"
    );
    let records = |root: &Path| m.records(root);
    for root in [&m.backend, &m.frontend] {
        let last = records(root).last().unwrap().clone();
        assert_eq!(
            (last["commit"].as_str(), last["state"].as_str()),
            (Some(second.as_str()), Some("succeeded"))
        );
    }
    assert!(m.page().contains(&second));
}
