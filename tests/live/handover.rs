//! The handover (`[serve]`) with a real nginx in front of real gunicorn, under load from
//! clients that keep their connections alive: a good deploy, releases that fail on their slot
//! (500s, never binding, crashing after a good probe), a rollback, a long request in flight at
//! the switch, and kills of the hook at random instants. Every answer a client got is checked.

use crate::support::apps::*;
use crate::support::proxy::{changes, Clients, Nginx, Seen};
use crate::support::rng::Rng;
use crate::support::*;
use pretty_assertions::assert_eq;
use std::time::Duration;

/// A server deploying the sample app by handover, nginx in front; v1 already live.
pub(super) struct Handover {
    pub(super) server: Server,
    pub(super) nginx: Nginx,
    pub(super) clone: Clone,
    pub(super) slots: [String; 2],
    pub(super) v1: String,
}

impl Handover {
    pub(super) fn start() -> Handover {
        let server = Server::new();
        let root = server.root.clone();
        let slots = [closed_port(), closed_port()].map(|p| format!("127.0.0.1:{p}"));
        let nginx = Nginx::start(server.path(), &format!("127.0.0.1:{}", closed_port()));
        let config = config(
            &root,
            &slots,
            &nginx,
            &[
                ("sudo -n /usr/sbin/nginx -t -q", &nginx.test_command()),
                (
                    "sudo -n /usr/bin/systemctl reload nginx",
                    &nginx.reload_command(),
                ),
                // A release that never binds hangs in its import: with --preload, before the bind.
                ("--workers 2", "--preload --workers 2"),
                ("timeout = \"30s\"", "timeout = \"10s\""),
                ("drain = \"30s\"", "drain = \"10s\""),
            ],
        );
        let (clone, v1) = sample_app(&server, &config);
        clone
            .push()
            .success()
            .stderr_has("slot a: started")
            .stderr_has("health of slot a: ok after")
            .stderr_has("proxy: nginx reloaded with `server ")
            .stderr_has("proxy: ok after")
            .stderr_has(&format!("ats-hook: deployed {}", &v1[..7]));
        assert_eq!(get(&nginx.url("")).unwrap().trim(), v1);
        Handover {
            server,
            nginx,
            clone,
            slots,
            v1,
        }
    }

    /// The pids of the slots' servers that run now, by slot.
    pub(super) fn running(&self) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for slot in ["a", "b"] {
            let file = self
                .server
                .root
                .join(format!(".ats-hook/slots/{slot}.json"));
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let state: serde_json::Value = serde_json::from_str(&text).unwrap();
            if let Some(pid) = state["pid"].as_i64() {
                if alive(pid as i32) {
                    out.push((slot.to_string(), pid as i32));
                }
            }
        }
        out
    }

    /// The process groups of the workers ats-hook started, by their files.
    pub(super) fn worker_groups(&self) -> Vec<i32> {
        let dir = self.server.root.join(".ats-hook/workers");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                let state: serde_json::Value = serde_json::from_str(&text).ok()?;
                state["pid"].as_i64().map(|pid| pid as i32)
            })
            .collect()
    }

    /// The processes of any release that run now.
    fn servers(&self) -> Vec<i32> {
        let releases = self.server.root.join("releases");
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| {
                alive(*pid)
                    && std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .is_ok_and(|cwd| cwd.starts_with(&releases))
            })
            .collect()
    }

    /// Exactly one slot runs, nginx sends to it, and it serves what the history says is live.
    #[track_caller]
    pub(super) fn one_slot_serves(&self, commit: &str) {
        let running = self.running();
        assert_eq!(running.len(), 1, "slots running: {running:?}");
        let slot = &running[0].0;
        let addr = &self.slots[if slot == "a" { 0 } else { 1 }];
        assert_eq!(&self.nginx.points_at(), addr);
        assert_eq!(get(&self.nginx.url("")).unwrap().trim(), commit);
        let live = self.server.live().unwrap();
        let record = self
            .server
            .records()
            .into_iter()
            .rev()
            .find(|r| r["release"] == live.as_str() && r["state"] != "switching")
            .unwrap();
        assert_eq!(record["commit"], commit);
        // Every server process is the live slot's: none left over from another release.
        let group = running[0].1;
        let workers = self.worker_groups();
        for pid in self.servers() {
            let pgid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(2)?
                        .parse::<i32>()
                        .ok()
                });
            if pgid.is_some_and(|g| workers.contains(&g)) {
                continue;
            }
            assert_eq!(
                pgid,
                Some(group),
                "pid {pid} runs outside the live slot and the workers"
            );
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let slots = self.running().into_iter().map(|(_, pid)| pid);
        for pid in slots.chain(self.worker_groups()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// contrib/examples/nginx-gunicorn-handover.toml for this root, these slots and this nginx,
/// with `more` replacements.
pub(super) fn config(
    root: &std::path::Path,
    slots: &[String; 2],
    nginx: &Nginx,
    more: &[(&str, &str)],
) -> String {
    let upstream = nginx.upstream.display().to_string();
    let url = nginx.url("");
    let mut all = vec![
        ("/srv/app", root.to_str().unwrap()),
        ("127.0.0.1:8001", slots[0].as_str()),
        ("127.0.0.1:8002", slots[1].as_str()),
        ("/etc/nginx/ats-hook/app/upstream.conf", upstream.as_str()),
        ("http://127.0.0.1/", url.as_str()),
        // The sample app's worker and scheduler stand for celery's.
        (".venv/bin/celery -A app worker --loglevel INFO", ".venv/bin/python tasks.py"),
        ("stop_timeout = \"60s\"", "stop_timeout = \"10s\""),
        (
            ".venv/bin/celery -A app beat --loglevel INFO --schedule \\\"$ATS_DEPLOY_ROOT/shared/celerybeat-schedule\\\"",
            ".venv/bin/python beat.py",
        ),
    ];
    all.extend_from_slice(more);
    example_config("nginx-gunicorn-handover.toml", &all)
}

/// `config` on `server`, with its env file, and a clone of the sample app holding its first
/// commit (not pushed yet).
pub(super) fn sample_app(server: &Server, config: &str) -> (Clone, String) {
    server.config(config);
    write_env(&server.root, None);
    let clone = server.clone("work");
    copy_sample_app(&clone);
    let v1 = clone.commit("first version");
    (clone, v1)
}

/// shared/.env: where pip finds the sample app's wheels; owned by `uid` when given.
pub(super) fn write_env(root: &std::path::Path, uid: Option<u32>) {
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(
        shared.join(".env"),
        format!(
            "PIP_NO_INDEX=1\nPIP_FIND_LINKS={}\n",
            wheelhouse().display()
        ),
    )
    .unwrap();
    for path in [shared.clone(), shared.join(".env")] {
        std::os::unix::fs::chown(&path, uid, None).unwrap();
    }
}

/// No client saw a failure, and each saw the served commit go from `old` to `new` once.
#[track_caller]
pub(super) fn served_once_from_to(seen: &[Seen], old: &str, new: &str) {
    for (n, client) in seen.iter().enumerate() {
        assert_eq!(client.failures, Vec::<String>::new(), "client {n}");
        assert_eq!(
            changes(client),
            [old, new],
            "client {n} saw the commits change so"
        );
    }
    let answers: usize = seen.iter().map(|s| s.bodies.len()).sum();
    assert!(answers > 100, "only {answers} answers under load");
}

/// No client saw a failure or anything but `commit`.
#[track_caller]
fn served_only(seen: &[Seen], commit: &str) {
    for (n, client) in seen.iter().enumerate() {
        assert_eq!(client.failures, Vec::<String>::new(), "client {n}");
        assert_eq!(changes(client), [commit], "client {n}");
    }
}

/// Pushes under load from four clients; what each saw.
pub(super) fn push_under_load(h: &Handover, push: impl FnOnce() -> Run) -> (Run, Vec<Seen>) {
    let clients = Clients::start(h.nginx.port, "", 4);
    std::thread::sleep(Duration::from_millis(500));
    let run = push();
    std::thread::sleep(Duration::from_millis(500));
    (run, clients.stop())
}

#[test]
fn a_deploy_and_a_rollback_hand_over_under_load_without_a_failed_request() {
    let h = Handover::start();
    h.one_slot_serves(&h.v1);
    let v2 = h.clone.commit_file("NOTES", "second\n");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.success()
        .stderr_has("slot b: started")
        .stderr_has("health of slot b: ok after")
        .stderr_has("proxy: ok after")
        .stderr_has("slot a: stopped")
        .stderr_has(&format!("ats-hook: deployed {}", &v2[..7]));
    served_once_from_to(&seen, &h.v1, &v2);
    h.one_slot_serves(&v2);
    assert_eq!(h.server.last_record()["slot"], "b");

    let status = h.server.ats(&["status"]);
    status
        .success()
        .stdout_has("b ")
        .stdout_has(" live  runs ")
        .stdout_has(" idle  runs nothing")
        .stdout_has("the live slot");
    let json: serde_json::Value =
        serde_json::from_str(&h.server.ats(&["status", "--json"]).stdout()).unwrap();
    assert_eq!(json["handover"]["live_slot"], "b");
    assert_eq!(json["handover"]["proxy_as_recorded"], true);

    // The rollback goes through the same handover: v1 again, on slot a.
    let (rollback, seen) = push_under_load(&h, || h.server.ats(&["rollback"]));
    rollback
        .success()
        .stderr_has("slot a: started")
        .stderr_has("slot b: stopped");
    served_once_from_to(&seen, &v2, &h.v1);
    h.one_slot_serves(&h.v1);

    h.server
        .ats(&["check"])
        .success()
        .stdout_has("model:     handover")
        .stdout_has("health:    on the new slot: GET http://{addr}/");
}

#[test]
fn releases_that_fail_on_their_slot_never_reach_a_user() {
    let h = Handover::start();
    let broken = [
        (
            "answers 500",
            "def application(environ, start_response):\n    start_response('500 Internal Server Error', [('Content-Type', 'text/plain')])\n    return [b'broken\\n']\n",
            "HTTP 500 (expected 200)",
        ),
        (
            "never binds",
            "import time\ntime.sleep(3600)\n",
            "connection refused",
        ),
        (
            "crashes after its first good probe",
            "import os, signal, threading\nfrom app import app\n\ndef application(environ, start_response):\n    # Answers, then the whole server dies: the master and its workers.\n    threading.Timer(0.1, os.killpg, (os.getpgid(0), signal.SIGKILL)).start()\n    return app(environ, start_response)\n",
            "its server (pid ",
        ),
    ];
    for (what, wsgi, says) in broken {
        h.clone.write("wsgi.py", wsgi);
        let commit = h.clone.commit(what);
        let (push, seen) = push_under_load(&h, || h.clone.push());
        push.stderr_has(says).stderr_has(&format!(
            "deploy FAILED at the health check of slot b, before any request reached it; {} is still live",
            &h.v1[..7]
        ));
        served_only(&seen, &h.v1);
        h.one_slot_serves(&h.v1);
        let record = h.server.last_record();
        assert_eq!(record["state"], "failed", "{what}");
        assert_eq!(record["commit"], commit.as_str());
    }
    // In gate mode, the push is rejected and the branch stays where the site is.
    h.clone.write("wsgi.py", broken[0].1);
    h.clone.commit("answers 500 again");
    h.server.gate();
    let tip = h.server.tip("refs/heads/main");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.failure().stderr_has("HTTP 500 (expected 200)");
    served_only(&seen, &h.v1);
    assert_eq!(h.server.tip("refs/heads/main"), tip);
    h.one_slot_serves(&h.v1);
}

#[test]
fn a_long_request_in_flight_at_the_switch_completes() {
    let h = Handover::start();
    let slow_url = h.nginx.url("slow");
    let slow = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        agent
            .get(&slow_url)
            .call()
            .map_err(|e| e.to_string())
            .and_then(|mut r| r.body_mut().read_to_string().map_err(|e| e.to_string()))
    });
    // The request is in the old slot before the push starts.
    std::thread::sleep(Duration::from_millis(300));
    let v2 = h.clone.commit_file("NOTES", "second\n");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.success().stderr_has("slot a: stopped");
    assert_eq!(slow.join().unwrap().unwrap().trim(), h.v1);
    served_once_from_to(&seen, &h.v1, &v2);
    h.one_slot_serves(&v2);
}

/// The `ats-hook` process under a push, once it runs.
fn hook_of(push: &std::process::Child) -> Option<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    // Breadth first: the hook comes before the watcher it starts, which runs the same binary.
    let mut family = vec![push.id() as i32];
    let mut n = 0;
    while n < family.len() {
        let parent = family[n];
        family.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        n += 1;
    }
    family.into_iter().skip(1).find(|pid| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe == std::path::Path::new(BIN))
    })
}

#[test]
fn kills_of_the_hook_at_random_instants_leave_one_healthy_slot_and_fail_no_request() {
    let h = Handover::start();
    let clients = Clients::start(h.nginx.port, "", 4);
    let mut rng = Rng(0x5eed_0f4a_11ed);
    let mut pushed = vec![h.v1.clone()];
    for n in 0..10 {
        pushed.push(h.clone.commit_file("NOTES", &format!("{n}\n")));
        let push = h.clone.spawn_push(&["main"]);
        let mut hook = None;
        wait_for("the hook to start", Duration::from_secs(30), || {
            hook = hook_of(&push);
            hook.is_some()
        });
        std::thread::sleep(Duration::from_millis(rng.below(4000) as u64));
        // A deploy may be done before its instant comes: then there is nothing to kill.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(hook.unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = push.wait_with_output().unwrap();
    }
    // The next run finds what the last killed one left, and deploys.
    let last = h.clone.commit_file("NOTES", "last\n");
    pushed.push(last.clone());
    h.clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &last[..7]));
    std::thread::sleep(Duration::from_millis(500));
    let seen = clients.stop();
    for (n, client) in seen.iter().enumerate() {
        assert_eq!(client.failures, Vec::<String>::new(), "client {n}");
        for body in changes(client) {
            assert!(pushed.contains(&body), "client {n} was served {body:?}");
        }
        assert_eq!(changes(client).last(), Some(&last));
    }
    h.one_slot_serves(&last);
    // Every switch that a kill interrupted was undone and recorded, even when the run undoing it
    // was killed too.
    let records = h.server.records();
    for (n, record) in records.iter().enumerate() {
        if record["state"] == "switching" {
            assert!(
                records[n + 1..]
                    .iter()
                    .any(|r| r["id"] == record["id"] && r["state"] != "switching"),
                "{} was left switching: {records:#?}",
                record["id"]
            );
        }
    }
    let interrupted = records
        .iter()
        .filter(|r| r["state"] == "interrupted")
        .count();
    assert!(interrupted >= 1, "no kill was recorded as interrupted");
}
