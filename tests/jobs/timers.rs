//! Jobs as systemd timers, system units of a private systemd (TESTBED.md): pushed to from
//! inside its namespace, so that the hook's `systemctl` reaches it and its units go to its own
//! /etc/systemd/system. Schedules of every second or two, so that runs come without sleeping
//! minutes. User units (`systemctl --user`) need a user manager this systemd does not start:
//! their files are checked by content in `src/live/jobs/timers.rs`.

use super::*;
use crate::support::apps::Systemd;
use pretty_assertions::assert_eq;
use std::time::Duration;

struct Timers {
    server: Server,
    clone: Clone,
    systemd: Systemd,
}

impl Timers {
    fn start(config: &str) -> Timers {
        let server = Server::new();
        server.config(config);
        let units = server.path().join("units");
        std::fs::create_dir_all(&units).unwrap();
        let systemd = Systemd::boot_with_etc(&units, &[]);
        let clone = server.clone("work");
        Timers {
            server,
            clone,
            systemd,
        }
    }

    /// `git push staging main` from inside the namespace.
    fn push(&self) -> Run {
        let mut cmd = command("nsenter", self.server.path());
        cmd.args([
            "-t",
            &self.systemd.pid.to_string(),
            "-p",
            "-m",
            "--",
            "git",
            "-C",
        ])
        .arg(&self.clone.dir)
        .args(["push", "staging", "main"]);
        run(&mut cmd, "git push staging main (in the namespace)")
    }

    /// `ats-hook ARGS --repo …` from inside the namespace.
    fn ats(&self, args: &[&str]) -> Run {
        let mut cmd = command("nsenter", self.server.path());
        cmd.args(["-t", &self.systemd.pid.to_string(), "-p", "-m", "--", BIN])
            .args(args)
            .arg("--repo")
            .arg(&self.server.bare);
        run(
            &mut cmd,
            format!("ats-hook {} (in the namespace)", args.join(" ")),
        )
    }

    fn timers(&self) -> String {
        self.systemd
            .systemctl(&["list-timers", "--all", "--no-legend"])
            .success()
            .stdout()
    }

    fn unit_exists(&self, name: &str) -> bool {
        self.systemd
            .nsenter(&["test", "-e", &format!("/etc/systemd/system/{name}")])
            .status()
            .unwrap()
            .success()
    }

    fn schedule(&self, text: &str) -> String {
        self.clone.write("schedule.toml", text);
        self.clone.commit("schedule")
    }
}

fn job(name: &str, when: &str, run: &str, extra: &str) -> String {
    format!("[[job]]\nname = \"{name}\"\nschedule = \"{when}\"\nrun = '{run}'\n{extra}")
}

#[test]
fn timers_follow_each_deploy_a_failed_one_and_a_rollback() {
    let t = Timers::start(&config("systemd"));
    let tick = |name: &str| {
        job(
            name,
            "*/2 * * * * *",
            &format!(r#"echo "{name} $ATS_COMMIT" >> "$ATS_DEPLOY_ROOT/ticks""#),
            "",
        )
    };
    let first = t.schedule(&tick("tick"));
    t.push()
        .success()
        .stderr_has("jobs: installed tick (systemd)");
    assert!(
        t.timers().contains("ats-hook-app-tick.timer"),
        "{}",
        t.timers()
    );
    wait_for("two runs of tick", Duration::from_secs(15), || {
        runs_of(&t.server, "tick", "succeeded").len() >= 2
    });
    assert!(lines_of(&t.server, "ticks").contains(&format!("tick {first}")));
    assert_eq!(runs_of(&t.server, "tick", "succeeded")[0]["by"], "timer");

    // A rename: the old timer and its units go.
    let second = t.schedule(&tick("tock"));
    t.push()
        .success()
        .stderr_has("jobs: installed tock (systemd); removed tick");
    let timers = t.timers();
    assert!(
        timers.contains("ats-hook-app-tock.timer") && !timers.contains("ats-hook-app-tick.timer"),
        "{timers}"
    );
    assert!(
        !t.unit_exists("ats-hook-app-tick.timer") && !t.unit_exists("ats-hook-app-tick.service")
    );
    let ticks_then = runs_of(&t.server, "tick", "succeeded").len();
    wait_for("tock to run", Duration::from_secs(15), || {
        lines_of(&t.server, "ticks").contains(&format!("tock {second}"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        runs_of(&t.server, "tick", "succeeded").len(),
        ticks_then,
        "tick ran after its removal"
    );

    // A failed deploy keeps tock.
    t.clone.write("FAIL", "");
    t.schedule(&tick("broken"));
    t.push().stderr_has("deploy FAILED");
    assert!(t.timers().contains("ats-hook-app-tock.timer") && !t.timers().contains("broken"));

    // A rollback brings back tick, with the first release's command and commit.
    t.ats(&["rollback"])
        .success()
        .stderr_has("jobs: installed tick (systemd); removed tock");
    let count = lines_of(&t.server, "ticks").len();
    wait_for("tick to run again", Duration::from_secs(15), || {
        lines_of(&t.server, "ticks")[count..].contains(&format!("tick {first}"))
    });
    assert!(!t.timers().contains("ats-hook-app-tock.timer"));

    // `jobs` reads what a user wants to know.
    let listed = t.ats(&["jobs"]).success().stdout();
    assert!(listed.contains("installed with systemd"), "{listed}");
    let line = listed
        .lines()
        .find(|l| l.trim_start().starts_with("tick"))
        .unwrap();
    assert!(
        line.contains("*/2 * * * * *") && line.contains("last succeeded") && line.contains("next "),
        "{listed}"
    );

    // A lost record of what is installed: the units' marker still tells which are ats-hook's.
    std::fs::remove_file(t.server.root.join(".ats-hook/jobs/installed.json")).unwrap();
    std::fs::remove_file(t.clone.dir.join("FAIL")).unwrap();
    t.schedule(&tick("tack"));
    t.push()
        .success()
        .stderr_has("jobs: installed tack (systemd)");
    let timers = t.timers();
    assert!(
        timers.contains("ats-hook-app-tack.timer") && !timers.contains("ats-hook-app-tick.timer"),
        "{timers}"
    );
    assert!(!t.unit_exists("ats-hook-app-tick.service"));

    // No schedule: no timers.
    t.clone.git(&["rm", "--quiet", "schedule.toml"]).success();
    t.clone.commit("no jobs");
    t.push()
        .success()
        .stderr_has("jobs: none installed; removed tack");
    assert!(!t.timers().contains("ats-hook-app-"), "{}", t.timers());
    assert!(!t.unit_exists("ats-hook-app-tack.timer"));
}

#[test]
fn overlap_policies_and_the_timeout_under_systemd() {
    let t = Timers::start(&config("systemd"));
    let spans = r#"sleep 3"#;
    t.schedule(&format!(
        "{}{}{}{}",
        job("skipper", "* * * * * *", spans, ""),
        job("waiter", "* * * * * *", "sleep 2", "overlap = \"wait\"\n"),
        job(
            "replacer",
            "*/2 * * * * *",
            "sleep 30",
            "overlap = \"replace\"\n"
        ),
        job(
            "hang",
            "0 0 1 1 *",
            r#"sleep 300 & echo $! > "$ATS_DEPLOY_ROOT/hang.child"; sleep 300"#,
            "timeout = \"2s\"\n"
        ),
    ));
    t.push()
        .success()
        .stderr_has("jobs: installed skipper, waiter, replacer, hang (systemd)");
    wait_for("runs of each policy", Duration::from_secs(30), || {
        runs_of(&t.server, "skipper", "succeeded").len() >= 2
            && runs_of(&t.server, "waiter", "succeeded").len() >= 2
            && runs_of(&t.server, "replacer", "interrupted").len() >= 2
    });
    // A timer that fires during a run starts no second one (`skip`, systemd's own); `wait`
    // starts the next run once the last ended; neither overlaps.
    for name in ["skipper", "waiter"] {
        let done = runs_of(&t.server, name, "succeeded");
        assert_eq!(overlapping(&done), None, "{name}: {done:?}");
    }
    // `replace`: each new start stops the run before it.
    let replaced = runs_of(&t.server, "replacer", "interrupted");
    assert!(
        replaced
            .iter()
            .all(|r| r["duration_ms"].as_u64().unwrap() < 10_000),
        "{replaced:?}"
    );

    // A run past its timeout is stopped with what it started; the unit says it failed.
    t.systemd
        .systemctl(&["start", "ats-hook-app-hang.service"])
        .failure();
    assert_eq!(runs_of(&t.server, "hang", "timed-out").len(), 1);
    let child: i32 = std::fs::read_to_string(t.server.root.join("hang.child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The child's pid is one of the namespace: ask there.
    wait_for(
        "the job's child to be gone",
        Duration::from_secs(10),
        || {
            !t.systemd
                .nsenter(&["kill", "-0", &child.to_string()])
                .status()
                .unwrap()
                .success()
        },
    );
    let result = t
        .systemd
        .systemctl(&["show", "ats-hook-app-hang.service", "-p", "Result"])
        .success()
        .stdout();
    assert_eq!(result.trim(), "Result=exit-code");
}
