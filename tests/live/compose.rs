//! Docker Compose apps (`[compose]`) on a real Docker engine with Compose v2 (tests/docker-up):
//! by handover behind a real nginx under load, and recreated in place without `[serve]`. What a
//! user checks: which project and containers run, which image each runs, what HTTP serves, what
//! the pusher read, which images stay on disk.

use crate::support::apps::*;
use crate::support::docker::{self, Cleanup};
use crate::support::files::copy_dir;
use crate::support::proxy::{changes, Clients, Nginx, Seen};
use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;
use std::time::Duration;

/// The sample Compose app in a new clone of `server`, committed (not pushed).
fn compose_app(server: &Server) -> (Clone, String) {
    let clone = server.clone("work");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose-app"),
        &clone.dir,
    );
    let v1 = clone.commit("compose app");
    (clone, v1)
}

/// A server deploying the sample Compose app by handover, nginx in front; v1 live.
struct ComposeHandover {
    server: Server,
    nginx: Nginx,
    clone: Clone,
    project: String,
    v1: String,
    _cleanup: Cleanup,
}

impl ComposeHandover {
    fn start() -> ComposeHandover {
        docker::require();
        let server = Server::new();
        let project = docker::project_name(server.path());
        let cleanup = Cleanup(project.clone());
        let slots = [closed_port(), closed_port()].map(|p| format!("127.0.0.1:{p}"));
        let nginx = Nginx::start(server.path(), &format!("127.0.0.1:{}", closed_port()));
        let upstream = nginx.upstream.display().to_string();
        let url = nginx.url("");
        let root = server.root.display().to_string();
        let config = example_config(
            "compose-nginx.toml",
            &[
                ("/srv/app", &root),
                ("project = \"app\"", &format!("project = \"{project}\"")),
                ("127.0.0.1:8001", &slots[0]),
                ("127.0.0.1:8002", &slots[1]),
                ("/etc/nginx/ats-hook/app/upstream.conf", &upstream),
                ("http://127.0.0.1/", &url),
                ("sudo -n /usr/sbin/nginx -t -q", &nginx.test_command()),
                (
                    "sudo -n /usr/bin/systemctl reload nginx",
                    &nginx.reload_command(),
                ),
                ("python manage.py migrate --noinput", "python3 migrate.py"),
                ("timeout = \"60s\"", "timeout = \"15s\""),
                ("drain = \"30s\"", "drain = \"10s\""),
                (
                    "paths = [\".secrets\", \".env\", \".production.env\"]",
                    "paths = [\".env\"]",
                ),
                (
                    "env_files = [\".env\", \".production.env\"]",
                    "env_files = [\".env\"]",
                ),
            ],
        );
        server.config(&config);
        std::fs::create_dir_all(server.root.join("shared")).unwrap();
        std::fs::write(server.root.join("shared/.env"), "GREETING=from-env-file\n").unwrap();
        std::fs::write(server.root.join("shared/app.env"), "SECRET_KEY=s3cret\n").unwrap();
        let (clone, v1) = compose_app(&server);
        clone
            .push()
            .success()
            .stderr_has("compose: built `")
            .stderr_has(&format!("migrating with {v1} image 1"))
            .stderr_has("slot a: started the container")
            .stderr_has("health of slot a: ok after")
            .stderr_has("proxy: ok after")
            .stderr_has(&format!("ats-hook: deployed {}", &v1[..7]));
        assert_eq!(get(&nginx.url("")).unwrap().trim(), v1);
        ComposeHandover {
            server,
            nginx,
            clone,
            project,
            v1,
            _cleanup: cleanup,
        }
    }

    /// The image ids the release built, by service, as ats-hook recorded them.
    fn built(&self, release: &str) -> serde_json::Value {
        let file = self
            .server
            .root
            .join(format!(".ats-hook/compose/{release}.images.json"));
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
    }

    /// One web container runs, on the live release's image, with the worker and the db; no
    /// other project or container.
    #[track_caller]
    fn serves(&self, commit: &str, slot: &str) {
        let p = &self.project;
        assert_eq!(
            docker::containers(p),
            [
                format!("{p}-db-1"),
                format!("{p}-web-{slot}"),
                format!("{p}-worker-1")
            ]
        );
        let live = self.server.live().unwrap();
        let built = self.built(&live);
        assert_eq!(docker::image_of(&format!("{p}-web-{slot}")), built["web"]);
        assert_eq!(docker::image_of(&format!("{p}-worker-1")), built["worker"]);
        assert_eq!(get(&self.nginx.url("")).unwrap().trim(), commit);
    }
}

fn push_under_load(h: &ComposeHandover, push: impl FnOnce() -> Run) -> (Run, Vec<Seen>) {
    let clients = Clients::start(h.nginx.port, "", 4);
    std::thread::sleep(Duration::from_millis(500));
    let run = push();
    std::thread::sleep(Duration::from_millis(500));
    (run, clients.stop())
}

/// No client saw a failure, and each saw the commits change as `commits` says.
#[track_caller]
fn served(seen: &[Seen], commits: &[&str]) {
    for (n, client) in seen.iter().enumerate() {
        assert_eq!(client.failures, Vec::<String>::new(), "client {n}");
        assert_eq!(changes(client), commits, "client {n}");
    }
    let answers: usize = seen.iter().map(|s| s.bodies.len()).sum();
    assert!(answers > 50, "only {answers} answers under load");
}

#[test]
fn compose_hands_over_under_load_and_rolls_back_to_the_old_images() {
    let h = ComposeHandover::start();
    let p = h.project.clone();
    h.serves(&h.v1, "a");
    let db = docker::out(&["inspect", "--format", "{{.Id}}", &format!("{p}-db-1")]);
    // The deploy's environment reaches the app's containers, with the env file's values for
    // the Compose file's `${…}`.
    assert_eq!(
        get(&h.nginx.url("env")).unwrap(),
        "GREETING=from-env-file\nFROM_ENV_FILE=\nSECRET_KEY=s3cret\n"
    );
    let v1_release = h.server.live().unwrap();
    h.server
        .ats(&["check"])
        .success()
        .stdout_has(&format!("compose:   project `{p}`, files compose.yaml"))
        .stdout_has(&format!("each built image is `{p}-<service>:<release>`"))
        .stdout_has(&format!(
            "start:     the container `{p}-web-<slot>` of `web`"
        ))
        .stdout_has("compose:   then the other services from the new release");

    // A good deploy: built, migrated with the new image, started beside the old one, switched.
    h.clone.write("VERSION", "2\n");
    let v2 = h.clone.commit("v2");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.success()
        .stderr_has(&format!("migrating with {v2} image 2"))
        .stderr_has("slot b: started the container")
        .stderr_has("slot a: stopped the container")
        .stderr_has(&format!("ats-hook: deployed {}", &v2[..7]));
    served(&seen, &[&h.v1, &v2]);
    h.serves(&v2, "b");
    let v2_release = h.server.live().unwrap();
    assert_ne!(h.built(&v1_release)["web"], h.built(&v2_release)["web"]);
    // The service nothing builds was left running as it was.
    assert_eq!(
        docker::out(&["inspect", "--format", "{{.Id}}", &format!("{p}-db-1")]),
        db
    );

    // A broken release (500s) fails on its slot: no user ever reads it.
    h.clone.write("BROKEN", "yes\n");
    let broken = h.clone.commit("broken");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.stderr_has("deploy FAILED")
        .stderr_has("FAILED at the health check of slot a, before any request reached it")
        .stderr_has("slot a: stopped the container");
    served(&seen, &[&v2]);
    assert!(!broken.is_empty());
    h.serves(&v2, "b");

    // A release whose container exits at once fails the same way.
    h.clone.git(&["rm", "-q", "BROKEN"]);
    h.clone.write("CRASH", "yes\n");
    h.clone.commit("crash");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.stderr_has("deploy FAILED")
        .stderr_has("slot a | crashing on purpose");
    served(&seen, &[&v2]);
    h.serves(&v2, "b");

    // The rollback runs v1's images again, built by nothing.
    let (rollback, seen) = push_under_load(&h, || h.server.ats(&["rollback", v1_release.as_str()]));
    rollback
        .success()
        .stderr_lacks("compose: built")
        .stderr_lacks("build |")
        .stderr_has("slot a: started the container");
    served(&seen, &[&v2, &h.v1]);
    h.serves(&h.v1, "a");
    assert_eq!(
        docker::image_of(&format!("{p}-web-a")),
        h.built(&v1_release)["web"]
    );

    // `releases` names each release's images; the live one's are what runs.
    let releases: serde_json::Value =
        serde_json::from_str(&h.server.ats(&["releases", "--json"]).stdout()).unwrap();
    let listed = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == v1_release.as_str())
        .unwrap();
    assert_eq!(listed["images"], h.built(&v1_release));
    let web_id = h.built(&v1_release)["web"].as_str().unwrap()[7..19].to_string();
    h.server
        .ats(&["releases"])
        .success()
        .stdout_has(&format!("images web={web_id}"));

    h.server
        .ats(&["status"])
        .success()
        .stdout_has(&format!(" live  runs {v1_release} (container {p}-web-a)"));

    // `ats-hook compose` reaches the live project: the worker runs v1's commit.
    let mut cmd = command(BIN, h.server.path());
    cmd.args(["compose", "--repo"]).arg(&h.server.bare).args([
        "--",
        "exec",
        "-T",
        "worker",
        "printenv",
        "ATS_COMMIT",
    ]);
    let exec = run(&mut cmd, "ats-hook compose -- exec");
    exec.success();
    assert_eq!(exec.stdout().trim(), h.v1);
}

/// The sample app recreated in place by `up --wait` (no `[serve]`), its web port published by
/// the Compose file from `[env]`.
fn in_place(server: &Server, project: &str, port: u16, keep: usize) -> String {
    format!(
        r#"
[deploy]
root = "ROOT"
keep_releases = {keep}

[env]
WEB_PORT = "{port}"

[compose]
project = "{project}"
wait = "20s"

[health]
url = "http://127.0.0.1:{port}/"
expect_body = "{{commit}}"
processes = ["web", "worker", "db"]
timeout = "10s"
interval = "200ms"
"#
    )
    .replace("ROOT", server.root.to_str().unwrap())
}

#[test]
fn compose_without_serve_recreates_in_one_project_and_prunes_images_of_pruned_releases() {
    docker::require();
    let server = Server::new();
    let project = docker::project_name(server.path());
    let _cleanup = Cleanup(project.clone());
    let port = closed_port();
    server.config(&in_place(&server, &project, port, 2));
    let (clone, v1) = compose_app(&server);
    clone
        .push()
        .success()
        .stderr_has("up | ")
        .stderr_has("1 container of `web`, 1 container of `worker`, 1 container of `db` on ");
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(get(&url).unwrap().trim(), v1);
    let p = &project;
    let names = [
        format!("{p}-db-1"),
        format!("{p}-web-1"),
        format!("{p}-worker-1"),
    ];
    assert_eq!(docker::containers(p), names);
    let first = server.live().unwrap();
    server
        .ats(&["check"])
        .success()
        .stdout_has("recreated in place (stopped, then started: requests fail meanwhile)");

    let v2 = clone.commit_file("VERSION", "2\n");
    clone.push().success();
    assert_eq!(get(&url).unwrap().trim(), v2);
    // Still one project: the containers were recreated, not doubled.
    assert_eq!(docker::containers(p), names);
    let second = server.live().unwrap();

    // A release whose web container exits: `up --wait` fails, the old release comes back.
    clone.write("CRASH", "yes\n");
    clone.commit("crash");
    clone
        .push()
        .stderr_has("deploy FAILED")
        .stderr_has("switched current back to");
    assert_eq!(server.live().unwrap(), second);
    wait_for(
        "the old release to serve again",
        Duration::from_secs(20),
        || get(&url).is_ok_and(|body| body.trim() == v2),
    );

    // keep_releases = 2: the first release is pruned, and its images with it.
    clone.git(&["rm", "-q", "CRASH"]);
    let v4 = clone.commit_file("VERSION", "4\n");
    clone.push().success();
    assert_eq!(get(&url).unwrap().trim(), v4);
    let releases = server.releases();
    assert!(!releases.contains(&first), "{releases:?}");
    let mut expected: Vec<String> = releases
        .iter()
        .flat_map(|r| [format!("{p}-web:{r}"), format!("{p}-worker:{r}")])
        .collect();
    expected.sort();
    assert_eq!(docker::images(p), expected);
}

#[test]
fn a_compose_file_that_does_not_load_fails_the_push_and_changes_nothing() {
    docker::require();
    let server = Server::new();
    let project = docker::project_name(server.path());
    let _cleanup = Cleanup(project.clone());
    let port = closed_port();
    server.config(&in_place(&server, &project, port, 5));
    let (clone, v1) = compose_app(&server);
    clone.push().success();
    let live = server.live().unwrap();

    clone.write(
        "compose.yaml",
        "services:\n  web:\n    build: .\n    ports: 8000\n",
    );
    clone.commit("bad compose file");
    clone
        .push()
        .stderr_has("deploy FAILED")
        .stderr_has("the Compose file does not load")
        .stderr_has("FAILED at the Compose build, before any request reached it");
    assert_eq!(server.live().unwrap(), live);
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).unwrap().trim(),
        v1
    );

    // A Dockerfile that fails to build: the same.
    clone.git(&["checkout", "-q", &v1, "--", "compose.yaml"]);
    clone.write("Dockerfile", "FROM base:bookworm\nRUN exit 3\n");
    clone.commit("bad Dockerfile");
    clone
        .push()
        .stderr_has("deploy FAILED")
        .stderr_has("`docker compose build` failed");
    assert_eq!(server.live().unwrap(), live);
}
