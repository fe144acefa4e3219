//! Real application parts for the end-to-end flows: PostgreSQL, a systemd booted as PID 1 of
//! its own namespace, uWSGI, and the sample Flask app. Each is stopped when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::files::copy_dir;

use super::*;

/// Wheels for the sample app, fetched by tests/run, so steps install without reaching PyPI.
pub fn wheelhouse() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-wheels");
    let has_wheels = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    assert!(
        has_wheels,
        "{} is empty: tests/run downloads the sample app's wheels",
        dir.display()
    );
    dir
}

/// Copies the sample app into a clone.
pub fn copy_sample_app(clone: &Clone) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flask-app");
    copy_dir(&source, &clone.dir);
}

/// One GET; the body, or what went wrong.
pub fn get(url: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}

/// Waits (bounded) until `url` answers with `text` in its body.
#[track_caller]
pub fn wait_for_body(url: &str, text: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let last = match get(url) {
            Ok(body) if body.contains(text) => return,
            Ok(body) => body,
            Err(err) => err,
        };
        assert!(
            start.elapsed() < limit,
            "{url} did not serve {text:?} within {limit:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PostgreSQL 15 server in a temp folder, run by the `postgres` user (TESTBED.md).
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        system::require_root();
        let bin = Path::new("/usr/lib/postgresql/15/bin");
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL 15 is missing: install postgresql-15 (tests/run does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ats-hook-pg-")
            .tempdir()
            .unwrap();
        let chown = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let port = closed_port();
        let data = dir.path().join("data");
        let script = format!(
            "{bin}/initdb -D {data} -A trust -U app >/dev/null && {bin}/pg_ctl -D {data} -w -l {log} \
             -o \"-k {sock} -p {port} -c listen_addresses=127.0.0.1\" start >/dev/null && \
             {bin}/createdb -h 127.0.0.1 -p {port} -U app app",
            bin = bin.display(),
            data = data.display(),
            log = dir.path().join("log").display(),
            sock = dir.path().display()
        );
        let mut cmd = Command::new("su");
        cmd.args(["-s", "/bin/sh", "-c", &script, "postgres"]);
        run(&mut cmd, "start PostgreSQL").success();
        Postgres { dir, port }
    }

    pub fn url(&self) -> String {
        format!("postgresql://app@127.0.0.1:{}/app", self.port)
    }

    /// Runs one query with psql; its output, trimmed.
    pub fn query(&self, sql: &str) -> String {
        let mut cmd = Command::new("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.url(),
            "-c",
            sql,
        ]);
        run(&mut cmd, format!("psql -c {sql}"))
            .success()
            .stdout()
            .trim()
            .to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let script = format!(
            "/usr/lib/postgresql/15/bin/pg_ctl -D {} -m immediate stop",
            self.dir.path().join("data").display()
        );
        let _ = Command::new("su")
            .args(["-s", "/bin/sh", "-c", &script, "postgres"])
            .stdout(Stdio::null())
            .status();
    }
}

/// A systemd booted as PID 1 of a new PID and mount namespace, seeing only the units in one
/// folder (TESTBED.md). Everything it runs dies with it.
pub struct Systemd {
    unshare: Child,
    pub pid: i32,
}

impl Systemd {
    pub fn boot(units: &Path) -> Systemd {
        Systemd::boot_with(units, &[])
    }

    /// A systemd that also reads units from /etc/systemd/system, as a host's does, and sees an
    /// empty folder of its own there and at each of `private` (a tmpfs in its mount namespace):
    /// what is written there in the namespace never reaches this machine's /etc.
    pub fn boot_with_etc(units: &Path, private: &[&str]) -> Systemd {
        let mut folders = vec!["/etc/systemd/system"];
        folders.extend_from_slice(private);
        Systemd::boot_with(units, &folders)
    }

    fn boot_with(units: &Path, private: &[&str]) -> Systemd {
        system::require_root();
        // The boot target, and empty stand-ins for the targets units with default
        // dependencies (the ones a host has, as the role writes them) need.
        for target in [
            "minimal",
            "sysinit",
            "basic",
            "sockets",
            "network",
            "timers",
            "multi-user",
            "shutdown",
        ] {
            std::fs::write(
                units.join(format!("{target}.target")),
                "[Unit]\nDescription=ats-hook test target\n",
            )
            .unwrap();
        }
        // systemd must be PID 1: the shell that mounts the folders execs it.
        let mut script = String::new();
        for folder in private {
            script.push_str(&format!("mount -t tmpfs -o mode=0755 tmpfs {folder} && "));
        }
        script.push_str("exec /lib/systemd/systemd --system --unit=minimal.target");
        let unit_path = if private.contains(&"/etc/systemd/system") {
            format!("/etc/systemd/system:{}", units.display())
        } else {
            units.display().to_string()
        };
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "/bin/sh",
                "-c",
                &script,
            ])
            .env("SYSTEMD_UNIT_PATH", unit_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        let parent = unshare.id();
        let mut pid = 0;
        wait_for(
            "systemd to start in its namespace",
            Duration::from_secs(20),
            || {
                let children = Command::new("pgrep")
                    .arg("-P")
                    .arg(parent.to_string())
                    .output()
                    .unwrap();
                pid = String::from_utf8_lossy(&children.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                pid > 0
            },
        );
        let systemd = Systemd { unshare, pid };
        wait_for("systemd to answer", Duration::from_secs(20), || {
            systemd
                .nsenter(&["systemctl", "list-units", "--no-pager"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        systemd
    }

    /// A command run inside the namespace.
    pub fn nsenter(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-p", "-m", "--"])
            .args(args);
        cmd
    }

    pub fn systemctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["systemctl", "--no-pager"];
        all.extend_from_slice(args);
        run(
            &mut self.nsenter(&all),
            format!("systemctl {}", args.join(" ")),
        )
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // SIGTERM makes systemd re-execute itself; SIGKILL ends the namespace and all in it.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.wait();
    }
}

/// A sudoers rule in /etc/sudoers.d, removed when dropped.
pub struct Sudoers(PathBuf);

impl Sudoers {
    /// contrib/sudoers/ats-hook-app, for `user` instead of `deployer`.
    pub fn install_contrib(user: &str) -> Sudoers {
        Sudoers::install_contrib_file("ats-hook-app", user, &[])
    }

    /// A rule as given, as `/etc/sudoers.d/ats-hook-test-NAME`, checked with visudo.
    pub fn install_text(name: &str, text: &str) -> Sudoers {
        let path = PathBuf::from(format!("/etc/sudoers.d/ats-hook-test-{name}"));
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        let mut check = Command::new("visudo");
        check.arg("-cf").arg(&path);
        let checked = run(&mut check, "visudo -cf");
        let guard = Sudoers(path);
        checked.success();
        guard
    }

    /// contrib/sudoers/`name`, for `user` instead of `deployer`, with `replacements`.
    pub fn install_contrib_file(name: &str, user: &str, replacements: &[(&str, &str)]) -> Sudoers {
        let mut text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("contrib/sudoers")
                .join(name),
        )
        .unwrap();
        for (from, to) in replacements {
            assert!(text.contains(from), "{name} has no `{from}`");
            text = text.replace(from, to);
        }
        let path = PathBuf::from(format!("/etc/sudoers.d/{name}-test-{user}"));
        // Aliases share one namespace across /etc/sudoers.d: each test's gets its own names.
        let prefix = format!("ATS_HOOK_{}_", user.to_ascii_uppercase());
        let text = text
            .replace("ATS_HOOK_", &prefix)
            .replace("deployer ALL", &format!("{user} ALL"));
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        let mut check = Command::new("visudo");
        check.arg("-cf").arg(&path);
        run(&mut check, "visudo -cf").success();
        Sudoers(path)
    }
}

impl Drop for Sudoers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// uWSGI serving `root/current` with touch-reload, as the flask-uwsgi example's comment shows.
pub struct Uwsgi {
    child: Child,
    pub port: u16,
}

impl Uwsgi {
    pub fn start(port: u16, root: &Path, env_file: &Path, log: &Path) -> Uwsgi {
        assert!(
            Path::new("/usr/bin/uwsgi").exists(),
            "uwsgi is missing: install uwsgi and uwsgi-plugin-python3 (tests/run does)"
        );
        let current = root.join("current");
        let mut cmd = Command::new("uwsgi");
        cmd.args([
            "--plugin",
            "python3",
            "--master",
            "--processes",
            "2",
            "--die-on-term",
        ])
        .arg("--http-socket")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--virtualenv")
        .arg(root.join("current/.venv"))
        .arg("--chdir")
        .arg(&current)
        .arg("--wsgi-file")
        .arg(current.join("wsgi.py"))
        .arg("--touch-reload")
        .arg(current.join("wsgi.py"))
        .arg("--logto")
        .arg(log);
        for line in std::fs::read_to_string(env_file).unwrap().lines() {
            cmd.arg("--env").arg(line);
        }
        let child = cmd.stdin(Stdio::null()).spawn().unwrap();
        Uwsgi { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Uwsgi {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example config `contrib/examples/NAME`, with its paths and ports replaced.
pub fn example_config(name: &str, replacements: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/examples")
            .join(name),
    )
    .unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "{name} has no `{from}`");
        text = text.replace(from, to);
    }
    text
}

/// Requests without pause, round the URLs, on a thread of their own until stopped (bounded in
/// time and count whatever happens to the deploy under way).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Served>,
}

/// What a load saw.
pub struct Served {
    /// Per URL, each body served, in order.
    pub bodies: Vec<Vec<String>>,
    /// Each failed request: the URL and what went wrong.
    pub failures: Vec<String>,
    /// The slowest answer.
    pub longest: Duration,
}

impl Served {
    pub fn requests(&self) -> usize {
        self.bodies.iter().map(Vec::len).sum::<usize>() + self.failures.len()
    }
}

impl Load {
    pub fn start(urls: Vec<String>) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut served = Served {
                bodies: vec![Vec::new(); urls.len()],
                failures: Vec::new(),
                longest: Duration::ZERO,
            };
            while !stopped.load(Ordering::SeqCst)
                && served.requests() < 100_000
                && started.elapsed() < Duration::from_secs(300)
            {
                for (n, url) in urls.iter().enumerate() {
                    let sent = Instant::now();
                    match get(url) {
                        Ok(body) => served.bodies[n].push(body),
                        Err(err) => served.failures.push(format!("{url}: {err}")),
                    }
                    served.longest = served.longest.max(sent.elapsed());
                }
            }
            served
        });
        Load { stop, thread }
    }

    pub fn stop(self) -> Served {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}
