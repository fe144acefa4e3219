//! The handover's life beyond the web slots: workers and a scheduler restarted from the new
//! release (a task in flight finishes, the scheduler never runs twice), and `ats-hook start`
//! after a reboot.

use super::handover::{push_under_load, served_once_from_to, Handover};
use crate::support::apps::*;
use crate::support::*;
use std::time::Duration;

#[test]
fn workers_finish_their_task_and_the_scheduler_never_runs_twice() {
    let h = Handover::start();
    let shared = h.server.root.join("shared");
    let read = |name: &str| std::fs::read_to_string(shared.join(name)).unwrap_or_default();
    let v1 = h.v1[..].to_string();
    wait_for("a task of v1", Duration::from_secs(30), || {
        read("tasks.log").contains(&format!("start {v1}"))
    });
    let v2 = h.clone.commit_file("NOTES", "second\n");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.success()
        .stderr_has("worker celery: started ")
        .stderr_has(" gracefully")
        .stderr_has("worker beat: stopped ");
    served_once_from_to(&seen, &h.v1, &v2);
    wait_for("a task of v2", Duration::from_secs(30), || {
        read("tasks.log").contains(&format!("start {v2}"))
    });

    // Every task the old worker started, it finished: the stop waited for it.
    let tasks = read("tasks.log");
    let of = |what: &str, rev: &str| {
        tasks
            .lines()
            .filter(|l| l.starts_with(what) && l.contains(rev))
            .count()
    };
    assert!(of("start", &v1) >= 1, "{tasks}");
    assert_eq!(of("start", &v1), of("done", &v1), "{tasks}");

    // The scheduler: each one went down before the next came up.
    let beat = read("beat.log");
    let mut ups = Vec::new();
    let mut downs = std::collections::BTreeMap::new();
    for line in beat.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (what, pid, at) = (
            parts[0],
            parts[1].to_string(),
            parts[2].parse::<f64>().unwrap(),
        );
        if what == "up" {
            ups.push((at, pid));
        } else {
            downs.insert(pid, at);
        }
    }
    assert_eq!(ups.len(), 2, "{beat}");
    let first_down = downs
        .get(&ups[0].1)
        .copied()
        .expect("the first scheduler stopped");
    assert!(
        first_down <= ups[1].0,
        "two schedulers ran at once:\n{beat}"
    );
    assert!(!downs.contains_key(&ups[1].1), "{beat}");
    h.one_slot_serves(&v2);
    h.server
        .ats(&["status"])
        .success()
        .stdout_has("worker:      celery runs ")
        .stdout_has("worker:      beat runs ");
    h.server
        .ats(&["check"])
        .success()
        .stdout_has("worker:    beat from the new release once it serves: `.venv/bin/python beat.py`; TERM, then 25s for its task, then KILL; a singleton: stopped before its successor starts");
}

#[test]
fn start_after_a_reboot_brings_the_live_slot_and_the_workers_back_and_then_changes_nothing() {
    let h = Handover::start();
    let v2 = h.clone.commit_file("NOTES", "second\n");
    h.clone.push().success();
    h.one_slot_serves(&v2);
    // A reboot: every server and worker gone at once, their records left behind.
    let groups: Vec<i32> = h
        .running()
        .into_iter()
        .map(|(_, pid)| pid)
        .chain(h.worker_groups())
        .collect();
    for pid in &groups {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_for("the servers to die", Duration::from_secs(10), || {
        h.running().is_empty()
    });
    assert!(
        get(&h.nginx.url("")).is_err(),
        "served with nothing running"
    );
    h.server
        .ats(&["status"])
        .success()
        .stdout_has("should run ");

    let start = h.server.ats(&["start"]);
    start
        .success()
        .stderr_has("slot b: started ")
        .stderr_has("health of slot b: ok after")
        .stderr_has(" serves again")
        .stderr_has("worker celery: started ")
        .stderr_has("worker beat: started ");
    h.one_slot_serves(&v2);
    let records = h.server.records().len();

    // Again: all runs, nothing changes.
    let before = h.running();
    h.server.ats(&["start"]).success().stderr_has(" already");
    assert_eq!(h.running(), before);
    assert_eq!(h.server.records().len(), records, "start records nothing");
}

#[test]
fn start_says_what_it_is_for() {
    let server = Server::new();
    server
        .ats(&["start"])
        .failure()
        .stderr_has("`start` is for the handover (`[serve]`)");
}
