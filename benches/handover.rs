//! What users see of a deploy: the handover next to the usual restarts, under the same load, in
//! one run.
//!
//! Run with `cargo bench --bench handover` (add `-- --quick` for a shorter run; `tests/run` must
//! have downloaded the sample app's wheels into `target/test-wheels`, and installed nginx). The
//! Flask sample app under real gunicorn, behind a real nginx, is deployed through ats-hook as a
//! real post-receive hook, several times each way, while four clients keep their connections
//! to nginx alive and send requests one after the other (5 ms apart):
//!
//! - the handover (`[serve]`): the new release starts on the idle slot, is proven there, nginx
//!   switches, the old slot drains;
//! - switch, then a graceful reload in place: `current` switches, gunicorn gets HUP (started
//!   with `--chdir current`), then the health check;
//! - switch, then `systemctl restart` (gunicorn under a private systemd, run as root only).
//!
//! For each it prints the requests, the failed ones (connection errors and 5xx), how often a
//! client saw the served commit go back to an older one, and the median time of the moment of
//! going live: for the handover from "healthy" to "nginx switched and proven through it", for
//! the restarts from the switch to "healthy". Everything happens under one temporary folder.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod support;
use support::*;

#[path = "../tests/support/proxy.rs"]
mod proxy;
use proxy::{changes, Clients, Nginx};

#[path = "../tests/support/files.rs"]
mod files;

/// A finished command, as the proxy helper checks it.
pub struct Ran(Output, String);

impl Ran {
    pub fn success(&self) -> &Self {
        assert!(
            self.0.status.success(),
            "{} failed: {}",
            self.1,
            String::from_utf8_lossy(&self.0.stderr)
        );
        self
    }
}

pub fn run(cmd: &mut Command, what: impl Into<String>) -> Ran {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    Ran(out, what.into())
}

pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn send_signal(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            != Some("Z")
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Handover,
    Reload,
    Restart,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Handover => "handover: start beside, probe, switch nginx, drain",
            Way::Reload => "switch, then HUP (graceful reload in place)",
            Way::Restart => "switch, then `systemctl restart`",
        }
    }
}

/// One server deployed one way: its repository, root, clone, nginx, and for the restart a
/// private systemd (PID 1 of its own namespace).
struct Site {
    way: Way,
    bare: PathBuf,
    root: PathBuf,
    work: PathBuf,
    nginx: Nginx,
    systemd: Option<(std::process::Child, i32)>,
}

const STEPS: &str = r#"
[env]
file = "shared/.env"
[[step]]
name = "install-deps"
run = "make install-deps"
inputs = ["requirements.txt", "Makefile"]
outputs = [".venv"]
key = "/usr/bin/python3 --version"
[[step]]
name = "build"
run = "make build"
"#;

impl Site {
    fn new(base: &Path, way: Way, wheels: &Path) -> Site {
        let dir = base.join(format!("{}", way as u8));
        std::fs::create_dir_all(&dir).unwrap();
        let bare = dir.join("app.git");
        let root = dir.join("app");
        let port = closed_port();
        let nginx = match way {
            Way::Handover => Nginx::start(&dir, &format!("127.0.0.1:{}", closed_port())),
            _ => Nginx::start(&dir, &format!("127.0.0.1:{port}")),
        };
        let r = root.display();
        let config = match way {
            Way::Handover => format!(
                "[deploy]\nroot = \"{r}\"\n{STEPS}\n[serve]\nslots = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\
                 start = \".venv/bin/gunicorn --bind {{addr}} --workers 2 --graceful-timeout 10 wsgi:application\"\n\
                 drain = \"10s\"\nstop_timeout = \"15s\"\n[serve.proxy]\nnginx = \"{}\"\ntest = \"{}\"\nreload = \"{}\"\nurl = \"{}\"\n\
                 [health]\nurl = \"http://{{addr}}/\"\nexpect_body = \"{{commit}}\"\ntimeout = \"10s\"\ninterval = \"250ms\"\npasses = 3\n",
                closed_port(),
                closed_port(),
                nginx.upstream.display(),
                nginx.test_command(),
                nginx.reload_command(),
                nginx.url("")
            ),
            Way::Reload => format!(
                "[deploy]\nroot = \"{r}\"\n{STEPS}\n[restart]\nsignal = {{ pidfile = \"shared/gunicorn.pid\", signal = \"HUP\" }}\n\
                 start = \"{r}/current/.venv/bin/gunicorn --chdir {r}/current --bind 127.0.0.1:{port} --workers 2 --pid {r}/shared/gunicorn.pid --daemon wsgi:application\"\n\
                 [health]\nurl = \"http://127.0.0.1:{port}/\"\nexpect_body = \"{{commit}}\"\ntimeout = \"10s\"\ninterval = \"250ms\"\npasses = 3\n"
            ),
            Way::Restart => format!(
                "[deploy]\nroot = \"{r}\"\n{STEPS}\n[restart]\nsystemctl = [\"app.service\"]\n\
                 [health]\nurl = \"http://127.0.0.1:{port}/\"\nexpect_body = \"{{commit}}\"\ntimeout = \"10s\"\ninterval = \"250ms\"\npasses = 3\n"
            ),
        };
        hooked_repository(&dir, &bare, &config);
        std::fs::create_dir_all(root.join("shared")).unwrap();
        std::fs::write(
            root.join("shared/.env"),
            format!("PIP_NO_INDEX=1\nPIP_FIND_LINKS={}\n", wheels.display()),
        )
        .unwrap();
        let systemd = (way == Way::Restart).then(|| {
            let units = dir.join("units");
            std::fs::create_dir_all(&units).unwrap();
            std::fs::write(units.join("minimal.target"), "[Unit]\nDescription=bench\n").unwrap();
            std::fs::write(
                units.join("app.service"),
                format!(
                    "[Unit]\nDefaultDependencies=no\n[Service]\nWorkingDirectory={r}/current\n\
                     ExecStart={r}/current/.venv/bin/gunicorn --bind 127.0.0.1:{port} --workers 2 --graceful-timeout 10 wsgi:application\nKillMode=mixed\n"
                ),
            )
            .unwrap();
            boot_systemd(&units)
        });
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        files::copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flask-app"),
            &work,
        );
        git(&work, &["remote", "add", "staging", bare.to_str().unwrap()]);
        Site {
            way,
            bare,
            root,
            work,
            nginx,
            systemd,
        }
    }

    /// Commits a change and pushes it: the hook's summary line.
    fn deploy(&self, n: usize) -> String {
        let summary = self.push_change("NOTES", &format!("{n}\n"));
        assert!(
            summary.contains("ats-hook: deployed "),
            "{} did not deploy: {summary}",
            self.way.name()
        );
        summary
    }

    /// Commits `content` as `file` and pushes: the hook's summary line.
    fn push_change(&self, file: &str, content: &str) -> String {
        std::fs::write(self.work.join(file), content).unwrap();
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "-m", &format!("change {file}")],
        );
        let mut cmd = match &self.systemd {
            // The hook's `systemctl` must talk to the private systemd.
            Some((_, pid)) => {
                let mut cmd = hermetic(Command::new("nsenter"));
                cmd.args(["-t", &pid.to_string(), "-p", "-m", "--", "git", "-C"])
                    .arg(&self.work);
                cmd
            }
            None => hermetic(Command::new("git")),
        };
        let out = cmd
            .args(["push", "-q", "staging", "main"])
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("ats-hook: deployed ") || l.contains("FAILED"))
            .unwrap_or_default()
            .to_string();
        assert!(
            !summary.is_empty(),
            "{}: no summary:\n{text}",
            self.way.name()
        );
        summary
    }

    /// The time of going live, from a summary's stages.
    fn going_live(&self, summary: &str) -> Duration {
        let stages: &[&str] = match self.way {
            Way::Handover => &["switch"],
            _ => &["restart", "health"],
        };
        let (_, list) = summary.split_once(" — ").unwrap_or_default();
        list.split(", ")
            .filter_map(|item| {
                let (name, took) = item.trim().rsplit_once(' ')?;
                if !stages.contains(&name) {
                    return None;
                }
                match took.strip_suffix("ms") {
                    Some(ms) => ms.parse().ok().map(Duration::from_millis),
                    None => took
                        .strip_suffix('s')?
                        .parse()
                        .ok()
                        .map(Duration::from_secs_f64),
                }
            })
            .sum()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some((mut unshare, pid)) = self.systemd.take() {
            send_signal(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = unshare.wait();
        }
        // The slots' and the reloaded gunicorn's process groups.
        let mut pids = Vec::new();
        for file in ["slots/a.json", "slots/b.json"] {
            if let Ok(text) = std::fs::read_to_string(self.root.join(".ats-hook").join(file)) {
                let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                pids.extend(state["pid"].as_i64().map(|p| p as i32));
            }
        }
        if let Ok(text) = std::fs::read_to_string(self.root.join("shared/gunicorn.pid")) {
            pids.extend(text.trim().parse::<i32>().ok());
        }
        for pid in pids {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            send_signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = &self.bare;
    }
}

/// A systemd as PID 1 of a new PID and mount namespace, seeing only `units` (TESTBED.md).
fn boot_systemd(units: &Path) -> (std::process::Child, i32) {
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--mount-proc"])
        .args(["/lib/systemd/systemd", "--system", "--unit=minimal.target"])
        .env("SYSTEMD_UNIT_PATH", units)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    for _ in 0..200 {
        let out = Command::new("pgrep")
            .args(["-P", &unshare.id().to_string()])
            .output()
            .unwrap();
        if let Ok(pid) = String::from_utf8_lossy(&out.stdout).trim().parse::<i32>() {
            let answers = Command::new("nsenter")
                .args([
                    "-t",
                    &pid.to_string(),
                    "-p",
                    "-m",
                    "systemctl",
                    "is-system-running",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.code().is_some());
            if answers {
                return (unshare, pid);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = unshare.kill();
    let _ = unshare.wait();
    panic!("systemd did not start in its namespace");
}

/// What one way's deploys cost its users.
struct Tally {
    requests: usize,
    failed: usize,
    back: usize,
    going_live: Vec<Duration>,
    first_failure: Option<String>,
    /// Failed requests while a release that answers 500 was deployed (and refused).
    broken: usize,
}

fn measure(site: &Site, deploys: usize) -> Tally {
    let mut tally = Tally {
        requests: 0,
        failed: 0,
        back: 0,
        going_live: Vec::new(),
        first_failure: None,
        broken: 0,
    };
    // The first deploy starts the app: not measured.
    site.deploy(0);
    for n in 1..=deploys {
        let clients = Clients::start(site.nginx.port, "", 4);
        std::thread::sleep(Duration::from_millis(500));
        let summary = site.deploy(n);
        std::thread::sleep(Duration::from_millis(500));
        tally.going_live.push(site.going_live(&summary));
        for seen in clients.stop() {
            tally.requests += seen.bodies.len() + seen.failures.len();
            tally.failed += seen.failures.len();
            if tally.first_failure.is_none() {
                tally.first_failure = seen.failures.first().cloned();
            }
            tally.back += changes(&seen).len().saturating_sub(2);
        }
    }
    // A release that answers 500: each way refuses it; what did users get meanwhile?
    let clients = Clients::start(site.nginx.port, "", 4);
    std::thread::sleep(Duration::from_millis(500));
    let summary = site.push_change(
        "wsgi.py",
        "def application(environ, start_response):\n    start_response('500 Internal Server Error', [])\n    return [b'broken\\n']\n",
    );
    assert!(summary.contains("FAILED"), "{}: {summary}", site.way.name());
    std::thread::sleep(Duration::from_millis(500));
    tally.broken = clients.stop().iter().map(|s| s.failures.len()).sum();
    tally
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let deploys = if quick { 2 } else { 5 };
    let wheels = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-wheels");
    assert!(
        wheels.join(".complete").exists(),
        "{} is empty: run tests/run once, which downloads the sample app's wheels",
        wheels.display()
    );
    let base = tempfile::Builder::new()
        .prefix("ats-hook-bench-handover-")
        .tempdir()
        .unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    let mut ways = vec![Way::Handover, Way::Reload];
    if root {
        ways.push(Way::Restart);
    }
    let mut rows = Vec::new();
    for way in ways {
        let site = Site::new(base.path(), way, &wheels);
        let tally = measure(&site, deploys);
        rows.push((way, tally));
    }
    println!(
        "ats-hook handover benchmark: the Flask sample app under gunicorn (2 workers) behind nginx;\n\
         {deploys} deploys each way under 4 keep-alive clients; one run, one machine\n"
    );
    println!("| way | requests | failed | went back to an older commit | going live (median) | failed during a release that answers 500 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (way, tally) in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            way.name(),
            tally.requests,
            tally.failed,
            tally.back,
            ms(median(tally.going_live.clone())),
            tally.broken
        );
    }
    if !root {
        println!(
            "| switch, then `systemctl restart` | not run: a private systemd needs root | | | | |"
        );
    }
    println!();
    println!("going live: for the handover, from \"healthy on its slot\" to \"nginx switched and the new");
    println!(
        "commit seen through it\"; for the restarts, from the switch of `current` to \"healthy\","
    );
    println!("the time users meet a release nobody has checked yet. The broken release: each way");
    println!("refuses it (health.timeout 10s here, 30s by default); the restarts serve its 500s meanwhile.");
    for (way, tally) in &rows {
        if let Some(failure) = &tally.first_failure {
            let flat: String = failure.split_whitespace().collect::<Vec<_>>().join(" ");
            let flat: String = flat.chars().take(100).collect();
            println!("first failure, {}: {flat}", way.name());
        }
    }
    let handover = &rows[0].1;
    for (way, tally) in rows.iter().skip(1) {
        println!(
            "failed requests, {} against the handover: {} against {}",
            way.name(),
            tally.failed,
            handover.failed
        );
    }
}
