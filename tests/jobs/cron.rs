//! Jobs under cron: the block ats-hook owns in root's real crontab (these tests run as root,
//! one at a time, and put the table back as they found it), its lines run as cron runs them,
//! and one run by a real cron daemon.

use super::*;
use pretty_assertions::assert_eq;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The user's own lines, which every rewrite must keep as they are.
const MINE: &str = "MAILTO=\"\"\n# the admin's own backup\n17 3 * * * /bin/true backup\n";

/// Root's crontab, put back when dropped.
struct Crontab(Option<String>);

impl Crontab {
    fn save() -> Crontab {
        require_root();
        let listed = Command::new("crontab")
            .arg("-l")
            .output()
            .expect("crontab is installed (tests/run installs cron)");
        Crontab(
            listed
                .status
                .success()
                .then(|| String::from_utf8_lossy(&listed.stdout).into_owned()),
        )
    }

    fn set(text: &str) {
        let mut child = Command::new("crontab")
            .arg("-")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn read() -> String {
        let listed = Command::new("crontab").arg("-l").output().unwrap();
        String::from_utf8_lossy(&listed.stdout).into_owned()
    }
}

impl Drop for Crontab {
    fn drop(&mut self) {
        match &self.0 {
            Some(text) => Crontab::set(text),
            None => {
                let _ = Command::new("crontab").arg("-r").status();
            }
        }
    }
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cron tests run as root (they write root's crontab)"
    );
}

/// The lines of this server's block: (the five fields, the command as sh reads it).
fn block(server: &Server) -> Vec<(String, String)> {
    let table = Crontab::read();
    let begin = format!("# BEGIN ats-hook {}", server.root.display());
    let end = format!("# END ats-hook {}", server.root.display());
    let mut inside = false;
    let mut lines = Vec::new();
    for line in table.lines() {
        if line.starts_with(&begin) {
            inside = true;
        } else if line == end {
            inside = false;
        } else if inside {
            let parts: Vec<&str> = line.splitn(6, ' ').collect();
            lines.push((parts[..5].join(" "), parts[5].replace("\\%", "%")));
        }
    }
    lines
}

/// The block's command for `job`.
fn line_of(server: &Server, job: &str) -> String {
    block(server)
        .into_iter()
        .map(|(_, command)| command)
        .find(|command| command.ends_with(&format!(" {job}")))
        .unwrap_or_else(|| panic!("no line for `{job}` in\n{}", Crontab::read()))
}

/// Runs a crontab command as cron does: `sh -c` with cron's small environment.
fn as_cron(command: &str) -> std::process::Child {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("HOME", "/root")
        .env("LOGNAME", "root")
        .env("PATH", "/usr/bin:/bin")
        .env("SHELL", "/bin/sh")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_as_cron(command: &str) -> Run {
    Run {
        what: format!("cron: {command}"),
        output: as_cron(command).wait_with_output().unwrap(),
    }
}

fn schedule(jobs: &[(&str, &str, &str)]) -> String {
    jobs.iter()
        .map(|(name, when, run)| {
            format!("[[job]]\nname = \"{name}\"\nschedule = \"{when}\"\nrun = '{run}'\n")
        })
        .collect()
}

#[test]
fn each_deploy_installs_its_jobs_and_keeps_the_users_lines() {
    let _saved = Crontab::save();
    Crontab::set(MINE);
    let server = Server::new();
    server.config(&config("cron"));
    let clone = server.clone("work");
    let write_commit = r#"echo "$ATS_COMMIT" >> "$ATS_DEPLOY_ROOT/report.out""#;
    clone.write(
        "schedule.toml",
        &schedule(&[
            ("report", "*/15 9-17 * * mon-fri", write_commit),
            ("cleanup", "daily", "true"),
        ]),
    );
    let first = clone.commit("jobs");
    clone
        .push()
        .success()
        .stderr_has("jobs: installed report, cleanup (cron)");
    assert!(Crontab::read().starts_with(MINE), "{}", Crontab::read());
    let fields: Vec<String> = block(&server).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        ["*/15 9,10,11,12,13,14,15,16,17 * * 1,2,3,4,5", "0 0 * * *"]
    );
    run_as_cron(&line_of(&server, "report")).success();
    assert_eq!(
        lines_of(&server, "report.out"),
        std::slice::from_ref(&first)
    );
    let ran = runs_of(&server, "report", "succeeded");
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0]["by"], "cron");
    assert_eq!(ran[0]["commit"], first.as_str());
    let old_report = line_of(&server, "report");

    // A rename: the old job's line goes, the new one comes; the old line, run once more (a
    // cron that read the table before), runs nothing.
    clone.write(
        "schedule.toml",
        &schedule(&[
            ("digest", "@hourly", write_commit),
            ("cleanup", "daily", "true"),
        ]),
    );
    let second = clone.commit("rename report to digest");
    clone
        .push()
        .success()
        .stderr_has("jobs: installed digest, cleanup (cron); removed report");
    let names: Vec<String> = block(&server)
        .into_iter()
        .map(|(_, c)| c.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["digest", "cleanup"]);
    assert!(Crontab::read().starts_with(MINE));
    run_as_cron(&old_report)
        .success()
        .stderr_has("not in the live release's schedule");
    assert_eq!(runs_of(&server, "report", "not-declared").len(), 1);
    run_as_cron(&line_of(&server, "digest")).success();
    assert_eq!(
        lines_of(&server, "report.out"),
        [first.clone(), second.clone()]
    );

    // A failed deploy changes nothing of the schedule.
    clone.write("FAIL", "");
    clone.write("schedule.toml", &schedule(&[("broken", "daily", "false")]));
    clone.commit("a deploy that fails");
    clone.push().stderr_has("deploy FAILED");
    assert_eq!(block(&server).len(), 2);
    line_of(&server, "digest");

    // A rollback brings back the old release's schedule and command.
    std::fs::remove_file(clone.dir.join("FAIL")).unwrap();
    server
        .ats(&["rollback"])
        .success()
        .stderr_has("jobs: installed report, cleanup (cron); removed digest");
    run_as_cron(&line_of(&server, "report")).success();
    assert_eq!(lines_of(&server, "report.out").last().unwrap(), &first);
    assert!(Crontab::read().starts_with(MINE));

    // A release without a schedule removes the block, and leaves the table as it was.
    clone.git(&["rm", "--quiet", "schedule.toml"]).success();
    clone.commit("no more jobs");
    clone
        .push()
        .success()
        .stderr_has("jobs: none installed; removed report, cleanup");
    assert_eq!(Crontab::read(), MINE);
}

#[test]
fn runs_never_overlap_stop_whole_at_their_timeout_and_tell_their_failures() {
    let _saved = Crontab::save();
    Crontab::set(MINE);
    let server = Server::new();
    server.config(&format!(
        "{}\n[notify]\ncommand = \"cat >> notified.jsonl; echo >> notified.jsonl\"\non = [\"job-failed\"]\n",
        config("cron")
    ));
    let clone = server.clone("work");
    clone.write(
        "schedule.toml",
        &format!(
            "{}[[job]]\nname = \"hang\"\nschedule = \"* * * * *\"\ntimeout = \"2s\"\nrun = 'sleep 300 & echo $! > \"$ATS_DEPLOY_ROOT/hang.child\"; sleep 300'\n",
            schedule(&[
                ("slow", "* * * * *", r#"echo start >> "$ATS_DEPLOY_ROOT/slow.out"; sleep 3"#),
                ("fails", "* * * * *", "echo oops; exit 3"),
            ])
        ),
    );
    clone.commit("jobs");
    clone
        .push()
        .success()
        .stderr_has("jobs: installed slow, fails, hang (cron)");

    // Two starts while one runs (`overlap = "skip"`): one run.
    let slow = line_of(&server, "slow");
    let a = as_cron(&slow);
    std::thread::sleep(Duration::from_millis(500));
    let b = as_cron(&slow);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    assert_eq!(lines_of(&server, "slow.out"), ["start"]);
    assert_eq!(runs_of(&server, "slow", "succeeded").len(), 1);
    let skipped = runs_of(&server, "slow", "skipped");
    assert_eq!(skipped.len(), 1, "{:?}", runs(&server));
    assert!(
        skipped[0]["note"].as_str().unwrap().contains("still runs"),
        "{skipped:?}"
    );

    // Past its timeout, the job and what it started are stopped.
    let hang = run_as_cron(&line_of(&server, "hang"));
    hang.failure().stderr_has("job hang TIMED OUT");
    let child = std::fs::read_to_string(server.root.join("hang.child")).unwrap();
    let child: i32 = child.trim().parse().unwrap();
    wait_for(
        "the job's child to be gone",
        Duration::from_secs(10),
        || !alive(child),
    );
    assert_eq!(runs_of(&server, "hang", "timed-out").len(), 1);

    // A failure: its exit status to cron, its output in the log, told to [notify], in status.
    run_as_cron(&line_of(&server, "fails"))
        .failure()
        .stderr_has("job fails FAILED (exit 3)");
    let failed = runs_of(&server, "fails", "failed");
    assert_eq!(failed[0]["exit_code"], 3);
    server
        .ats(&["jobs", "log", "fails"])
        .success()
        .stdout_has("oops");
    let told = std::fs::read_to_string(server.root.join("notified.jsonl")).unwrap();
    let told: Vec<Value> = told
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<(&str, &str)> = told
        .iter()
        .map(|t| (t["event"].as_str().unwrap(), t["job"].as_str().unwrap()))
        .collect();
    assert_eq!(events, [("job-failed", "hang"), ("job-failed", "fails")]);
    server
        .ats(&["status"])
        .success()
        .stdout_has("job fails is FAILING: its last run failed");
    let listed = server.ats(&["jobs"]).success().stdout();
    for (job, last) in [
        ("slow", "last succeeded"),
        ("fails", "last failed"),
        ("hang", "last timed-out"),
    ] {
        let line = listed
            .lines()
            .find(|l| l.trim_start().starts_with(job))
            .unwrap_or_else(|| panic!("{listed}"));
        assert!(line.contains(last) && line.contains("next "), "{listed}");
    }
    let json: Value =
        serde_json::from_str(&server.ats(&["jobs", "--json"]).success().stdout()).unwrap();
    assert_eq!(json["installer"], "cron");
    assert_eq!(json["jobs"][1]["failing"], 1);
}

#[test]
fn a_real_cron_daemon_runs_the_installed_job() {
    let _saved = Crontab::save();
    Crontab::set(MINE);
    let server = Server::new();
    server.config(&config("cron"));
    let clone = server.clone("work");
    clone.write(
        "schedule.toml",
        &schedule(&[(
            "tick",
            "* * * * *",
            r#"echo "$ATS_JOB_NAME $ATS_COMMIT" >> "$ATS_DEPLOY_ROOT/ticks""#,
        )]),
    );
    let commit = clone.commit("a job every minute");
    clone.push().success();
    let daemon = Command::new("/usr/sbin/cron")
        .args(["-f", "-L", "15"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cron is installed (tests/run installs it)");
    let _daemon = ChildGuard(daemon);
    // cron starts jobs on the minute: at most one minute and a little.
    wait_for("cron to run the job", Duration::from_secs(75), || {
        !runs_of(&server, "tick", "succeeded").is_empty()
    });
    assert_eq!(lines_of(&server, "ticks"), [format!("tick {commit}")]);
    assert_eq!(runs_of(&server, "tick", "succeeded")[0]["by"], "cron");
}

#[test]
fn a_schedule_that_cannot_be_installed_stops_the_push_before_the_switch() {
    let _saved = Crontab::save();
    let server = Server::new();
    server.config(&config("cron"));
    let clone = server.clone("work");
    clone.commit_file("app.txt", "v1");
    clone.push().success();
    let live = server.live();
    for (text, says) in [
        (
            schedule(&[("fast", "*/2 * * * * *", "true")]),
            "cron cannot",
        ),
        (
            schedule(&[("bad", "61 * * * *", "true")]),
            "minute `61` is out of range",
        ),
        (
            schedule(&[("Bad Name", "daily", "true")]),
            "invalid job name",
        ),
        (
            "[[job]]\nname = \"x\"\nrun = \"true\"\n".to_string(),
            "missing field `schedule`",
        ),
    ] {
        clone.write("schedule.toml", &text);
        clone.commit("a bad schedule");
        clone
            .push()
            .stderr_has("deploy FAILED")
            .stderr_has(says)
            .stderr_has("schedule.toml");
        assert_eq!(server.live(), live);
        server
            .ats(&["check"])
            .failure()
            .stderr_has(says)
            .stderr_has("at the tip of `main`");
    }
    clone.write("schedule.toml", &schedule(&[("ok", "30 2 * * *", "true")]));
    clone.commit("a good one");
    clone
        .push()
        .success()
        .stderr_has("jobs: installed ok (cron)");
    server
        .ats(&["check"])
        .success()
        .stdout_has("jobs:      1 from `schedule.toml` at the tip of `main`, installed with cron")
        .stdout_has("ok `30 2 * * *`: `true` in the live release");
}

#[test]
fn a_run_waits_out_a_switch_and_a_deploy_waits_for_no_run() {
    let _saved = Crontab::save();
    let server = Server::new();
    // The restart holds the deploy in its switch for a while, `current` already switched.
    server.config(&format!(
        "{}\n[restart]\ncommand = 'touch \"$ATS_DEPLOY_ROOT/in-switch\"; sleep 3; rm \"$ATS_DEPLOY_ROOT/in-switch\"'\n",
        config("cron").replace("keep_releases = 5", "keep_releases = 5\nlog_limit = \"1 KiB\"")
    ));
    let clone = server.clone("work");
    let job = r#"echo "$ATS_COMMIT" >> "$ATS_DEPLOY_ROOT/ran"; test ! -e "$ATS_DEPLOY_ROOT/in-switch" || echo DURING >> "$ATS_DEPLOY_ROOT/ran""#;
    clone.write(
        "schedule.toml",
        &schedule(&[
            ("short", "hourly", job),
            ("long", "hourly", "sleep 8"),
            ("chatty", "hourly", "seq 1 2000"),
        ]),
    );
    clone.commit("v1");
    clone.push().success();

    // A deploy while `long` runs finishes while it still runs.
    let long = server.ats_child(&["run-job", "long"]);
    wait_for("long to run", Duration::from_secs(10), || {
        runs(&server).is_empty()
            && std::fs::read_to_string(server.root.join(".ats-hook/jobs/long.lock"))
                .is_ok_and(|t| t.contains("\"pid\""))
    });
    clone.commit_file("app.txt", "v2");
    let second = clone.head();
    clone.push().success().stderr_has("deployed");
    assert!(
        runs_of(&server, "long", "succeeded").is_empty(),
        "the deploy waited for the job"
    );

    // A run started while the next deploy is in its switch waits for its end, and runs the
    // release that is live then.
    clone.commit_file("app.txt", "v3");
    let third = clone.head();
    let push = clone.spawn_push(&["main"]);
    wait_for(
        "the deploy to be in its switch",
        Duration::from_secs(20),
        || server.root.join("in-switch").exists(),
    );
    server.ats(&["run-job", "short"]).success();
    let pushed = push.wait_with_output().unwrap();
    assert!(pushed.status.success());
    assert_eq!(
        lines_of(&server, "ran"),
        std::slice::from_ref(&third),
        "after {second}"
    );
    let long = long.wait_with_output().unwrap();
    assert!(long.status.success());
    assert_eq!(runs_of(&server, "long", "succeeded").len(), 1);

    // The run's log keeps `deploy.log_limit` and says what it cut.
    server.ats(&["run-job", "chatty"]).success();
    let log = server.ats(&["jobs", "log", "chatty"]).success().stdout();
    assert!(log.contains("\n1\n2\n"), "{log}");
    assert!(!log.contains("\n2000\n"), "{log}");
    assert!(
        log.contains("not kept: the log keeps 1.0 KiB (`deploy.log_limit`)"),
        "{log}"
    );
}

#[test]
fn a_release_a_run_still_works_in_is_neither_reused_nor_pruned() {
    let _saved = Crontab::save();
    let server = Server::new();
    server.config(&config("cron").replace("keep_releases = 5", "keep_releases = 2"));
    let clone = server.clone("work");
    clone.write(
        "schedule.toml",
        &schedule(&[(
            "long",
            "hourly",
            r#"sleep 6; cat app.txt > "$ATS_DEPLOY_ROOT/long.out""#,
        )]),
    );
    clone.commit_file("app.txt", "v1\n");
    clone.push().success();
    let first = server.live().unwrap();
    let long = server.ats_child(&["run-job", "long"]);
    wait_for("long to run", Duration::from_secs(10), || {
        std::fs::read_to_string(server.root.join(".ats-hook/jobs/long.lock"))
            .is_ok_and(|t| t.contains(&first))
    });
    for v in ["v2\n", "v3\n", "v4\n"] {
        clone.commit_file("app.txt", v);
        clone.push().success();
    }
    assert!(
        server.releases().contains(&first),
        "{:?}",
        server.releases()
    );
    let long = long.wait_with_output().unwrap();
    assert!(
        long.status.success(),
        "{}",
        String::from_utf8_lossy(&long.stderr)
    );
    // It ran to its end in its own release, unchanged under it.
    assert_eq!(
        std::fs::read_to_string(server.root.join("long.out")).unwrap(),
        "v1\n"
    );
    clone.commit_file("app.txt", "v5\n");
    clone.push().success();
    assert!(
        !server.releases().contains(&first),
        "{:?}",
        server.releases()
    );
}

#[test]
fn wait_queues_one_run_and_replace_stops_the_running_one() {
    let _saved = Crontab::save();
    let server = Server::new();
    server.config(&config("cron"));
    let clone = server.clone("work");
    clone.write(
        "schedule.toml",
        "[[job]]\nname = \"waiter\"\nschedule = \"* * * * *\"\noverlap = \"wait\"\nrun = 'sleep 2'\n\
         [[job]]\nname = \"replacer\"\nschedule = \"* * * * *\"\noverlap = \"replace\"\nrun = 'sleep 4'\n",
    );
    clone.commit("jobs");
    clone.push().success();

    // Three starts at once: one runs, one waits for it, the third finds one waiting.
    let waiter = line_of(&server, "waiter");
    let first = as_cron(&waiter);
    wait_for("the first run", Duration::from_secs(10), || {
        std::fs::read_to_string(server.root.join(".ats-hook/jobs/waiter.lock"))
            .is_ok_and(|t| t.contains("\"pid\""))
    });
    let second = as_cron(&waiter);
    std::thread::sleep(Duration::from_millis(500));
    let third = as_cron(&waiter).wait_with_output().unwrap();
    assert!(third.status.success());
    for run in [first, second] {
        assert!(run.wait_with_output().unwrap().status.success());
    }
    let done = runs_of(&server, "waiter", "succeeded");
    assert_eq!(done.len(), 2, "{:?}", runs(&server));
    assert_eq!(overlapping(&done), None, "{done:?}");
    let skipped = runs_of(&server, "waiter", "skipped");
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0]["note"]
            .as_str()
            .unwrap()
            .contains("a run already waits"),
        "{skipped:?}"
    );

    // A start while one runs stops it (its group) and runs anew.
    let replacer = line_of(&server, "replacer");
    let old = as_cron(&replacer);
    wait_for("the first run", Duration::from_secs(10), || {
        std::fs::read_to_string(server.root.join(".ats-hook/jobs/replacer.lock"))
            .is_ok_and(|t| t.contains("\"pid\""))
    });
    std::thread::sleep(Duration::from_millis(500));
    run_as_cron(&replacer).success().stderr_has("stopping run");
    assert!(!old.wait_with_output().unwrap().status.success());
    assert_eq!(
        runs_of(&server, "replacer", "interrupted").len(),
        1,
        "{:?}",
        runs(&server)
    );
    assert_eq!(runs_of(&server, "replacer", "succeeded").len(), 1);
}
