//! The test helper: a temporary server (a bare repository with ats-hook as its hook, and a
//! deploy root) and clones that push to it with the real `git` client.
//!
//! Every process runs in a hermetic environment: no system or global git config, a fixed
//! identity, a `HOME` inside the test's folder, and none of the caller's `GIT_*` variables.

#![allow(dead_code)]

pub mod apps;
pub mod files;
pub mod rng;
pub mod system;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pretty_assertions::assert_eq;
use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_ats-hook");

/// A command with the hermetic environment.
pub fn command(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("USER", "tester")
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z");
    cmd
}

/// What a finished process left: its status and output, with assertions that print both.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn show(&self) -> String {
        format!(
            "{} -> {:?}\n--- stdout\n{}--- stderr\n{}",
            self.what,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
    #[track_caller]
    pub fn success(&self) -> &Self {
        assert!(
            self.output.status.success(),
            "expected success:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn failure(&self) -> &Self {
        assert!(
            !self.output.status.success(),
            "expected failure:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.output.status.code(), Some(code), "{}", self.show());
        self
    }
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn stderr_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stderr().contains(needle),
            "stderr has {needle:?}:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout().contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.show()
        );
        self
    }
    #[track_caller]
    pub fn stdout_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout().contains(needle),
            "stdout has {needle:?}:\n{}",
            self.show()
        );
        self
    }
    /// The `remote:` lines git showed the pusher, without the prefix and git's padding.
    pub fn remote_lines(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter_map(|line| line.strip_prefix("remote: "))
            .map(|line| line.trim_end().to_string())
            .collect()
    }
    /// The last line ats-hook printed.
    pub fn summary(&self) -> String {
        let lines = self.remote_lines();
        let from_remote = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("ats-hook: "))
            .cloned();
        from_remote.unwrap_or_else(|| {
            self.stderr()
                .lines()
                .rev()
                .find(|l| l.starts_with("ats-hook: "))
                .unwrap_or("")
                .to_string()
        })
    }
}

pub fn run(cmd: &mut Command, what: impl Into<String>) -> Run {
    let output = cmd.stdin(Stdio::null()).output().expect("failed to spawn");
    Run {
        what: what.into(),
        output,
    }
}

/// A server: `app.git` with ats-hook as `hooks/post-receive`, deploying into `app/`.
pub struct Server {
    pub tmp: TempDir,
    pub bare: PathBuf,
    pub root: PathBuf,
}

pub const BASIC_CONFIG: &str = r#"
[deploy]
root = "ROOT"
"#;

impl Server {
    pub fn new() -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("ats-hook-test-")
            .tempdir()
            .unwrap();
        let bare = tmp.path().join("app.git");
        let root = tmp.path().join("app");
        run(
            command("git", tmp.path())
                .args(["init", "--quiet", "--bare", "-b", "main"])
                .arg(&bare),
            "git init --bare",
        )
        .success();
        std::os::unix::fs::symlink(BIN, bare.join("hooks/post-receive")).unwrap();
        let server = Server { tmp, bare, root };
        server.config(BASIC_CONFIG);
        server
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes `ats-hook.toml`; `"ROOT"` (quoted) stands for the deploy root.
    pub fn config(&self, toml: &str) -> &Self {
        let quoted = format!("\"{}\"", self.root.to_str().unwrap());
        let text = toml.replace("\"ROOT\"", &quoted);
        std::fs::write(self.bare.join("ats-hook.toml"), text).unwrap();
        self
    }

    /// A new clone with the remote `staging`.
    pub fn clone(&self, name: &str) -> Clone {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let clone = Clone {
            dir,
            home: self.tmp.path().to_path_buf(),
        };
        clone.git(&["init", "--quiet", "-b", "main"]).success();
        clone
            .git(&["remote", "add", "staging", self.bare.to_str().unwrap()])
            .success();
        clone
    }

    /// `ats-hook ARGS --repo app.git`.
    pub fn ats(&self, args: &[&str]) -> Run {
        let mut cmd = command(BIN, self.path());
        cmd.args(args).arg("--repo").arg(&self.bare);
        run(&mut cmd, format!("ats-hook {}", args.join(" ")))
    }

    /// `ats-hook post-receive` with `stdin` as git would feed it, in git's hook environment.
    pub fn hook_with_stdin(&self, stdin: &[u8]) -> Run {
        use std::io::Write;
        let mut child = command(BIN, self.path())
            .arg("post-receive")
            .env("GIT_DIR", ".")
            .current_dir(&self.bare)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The hook may stop reading early (a line too long): a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let output = child.wait_with_output().unwrap();
        Run {
            what: "ats-hook post-receive".into(),
            output,
        }
    }

    /// Gate mode: ats-hook runs as `hooks/pre-receive` instead of `post-receive`.
    pub fn gate(&self) -> &Self {
        std::fs::remove_file(self.bare.join("hooks/post-receive")).unwrap();
        std::os::unix::fs::symlink(BIN, self.bare.join("hooks/pre-receive")).unwrap();
        self
    }

    /// Where a ref of the bare repository points, if it exists.
    pub fn tip(&self, git_ref: &str) -> Option<String> {
        let mut cmd = command("git", self.path());
        cmd.args(["rev-parse", "--verify", "--quiet", git_ref])
            .current_dir(&self.bare);
        let run = run(&mut cmd, "git rev-parse");
        run.output
            .status
            .success()
            .then(|| run.stdout().trim().to_string())
    }

    /// The id of the live release.
    pub fn live(&self) -> Option<String> {
        std::fs::read_link(self.root.join("current"))
            .ok()
            .map(|target| target.file_name().unwrap().to_string_lossy().into_owned())
    }

    #[track_caller]
    pub fn live_file(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join("current").join(path))
            .unwrap_or_else(|err| panic!("current/{path}: {err}"))
    }

    pub fn releases(&self) -> Vec<String> {
        let mut ids: Vec<String> = match std::fs::read_dir(self.root.join("releases")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                // `.spare`, `.spare-new`, `.removing-…`: never releases.
                .filter(|name| !name.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        ids.sort();
        ids
    }

    /// The history as ats-hook itself reads it (a deploy's record of its switch replaced by its
    /// final record), as JSON.
    pub fn records(&self) -> Vec<Value> {
        ats_hook::state::record::read_all(&self.root.join(".ats-hook/deploys.jsonl"))
            .unwrap()
            .into_iter()
            .map(|record| serde_json::to_value(record).unwrap())
            .collect()
    }

    pub fn last_record(&self) -> Value {
        self.records().pop().expect("no deploy recorded")
    }

    /// The build folders the output store holds for `step`, finished or not.
    pub fn builds(&self, step: &str) -> std::collections::BTreeSet<String> {
        match std::fs::read_dir(self.root.join("outputs").join(step)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Default::default(),
        }
    }

    /// The build of `step` that `release`'s output `path` links to.
    #[track_caller]
    pub fn build_of(&self, release: &str, step: &str, path: &str) -> String {
        let link = self.root.join("releases").join(release).join(path);
        let target = std::fs::read_link(&link)
            .unwrap_or_else(|err| panic!("{} is not a link: {err}", link.display()));
        let rest = target
            .strip_prefix(self.root.join("outputs").join(step))
            .unwrap_or_else(|_| {
                panic!(
                    "{} points outside the store: {}",
                    link.display(),
                    target.display()
                )
            });
        rest.components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned()
    }

    /// The builds of `step` that the releases on disk link to at `path`.
    pub fn builds_in_use(&self, step: &str, path: &str) -> std::collections::BTreeSet<String> {
        self.releases()
            .iter()
            .map(|release| self.build_of(release, step, path))
            .collect()
    }
}

/// A working clone that commits and pushes.
pub struct Clone {
    pub dir: PathBuf,
    home: PathBuf,
}

impl Clone {
    /// A new repository `parent/name`, with no remote.
    pub fn new_in(parent: &Path, name: &str) -> Clone {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let clone = Clone {
            dir,
            home: parent.to_path_buf(),
        };
        clone.git(&["init", "--quiet", "-b", "main"]).success();
        clone
    }

    pub fn git(&self, args: &[&str]) -> Run {
        let mut cmd = command("git", &self.home);
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd, format!("git {}", args.join(" ")))
    }

    pub fn write(&self, path: &str, content: &str) -> &Self {
        let file = self.dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
        self
    }

    pub fn executable(&self, path: &str, content: &str) -> &Self {
        use std::os::unix::fs::PermissionsExt;
        self.write(path, content);
        std::fs::set_permissions(self.dir.join(path), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        self
    }

    /// Commits everything; returns the new sha.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]).success();
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message])
            .success();
        self.head()
    }

    /// Records `commit` as the submodule at `path` (an uninitialized one: its folder is empty)
    /// and lists it in `.gitmodules` with `url`, unless a submodule there is listed already.
    pub fn set_submodule(&self, path: &str, url: &str, commit: &str) {
        std::fs::create_dir_all(self.dir.join(path)).unwrap();
        let gitmodules = format!("[submodule \"{path}\"]\n\tpath = {path}\n\turl = {url}\n");
        let existing = std::fs::read_to_string(self.dir.join(".gitmodules")).unwrap_or_default();
        if !existing.contains(&format!("path = {path}\n")) {
            self.write(".gitmodules", &format!("{existing}{gitmodules}"));
        }
        self.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{path}"),
        ])
        .success();
    }

    /// Writes one file and commits it; returns the new sha.
    pub fn commit_file(&self, path: &str, content: &str) -> String {
        self.write(path, content);
        self.commit(&format!("write {path}"))
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
            .success()
            .stdout()
            .trim()
            .to_string()
    }

    /// `git push staging main`.
    pub fn push(&self) -> Run {
        self.git(&["push", "staging", "main"])
    }

    /// `git push staging ARGS...`.
    pub fn push_args(&self, args: &[&str]) -> Run {
        let mut all = vec!["push", "staging"];
        all.extend_from_slice(args);
        self.git(&all)
    }

    /// Starts `git push staging main` and waits (bounded) until its hook, or a step of it, has
    /// written a pid into `pidfile`: the push, and that pid.
    pub fn spawn_push_until_pid(&self, pidfile: &Path) -> (std::process::Child, i32) {
        let push = self.spawn_push(&["main"]);
        (push, pid_in(pidfile))
    }

    /// Starts `git push staging ARGS...` without waiting.
    pub fn spawn_push(&self, args: &[&str]) -> std::process::Child {
        command("git", &self.home)
            .arg("push")
            .arg("staging")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The watchers (`ats-hook watch-groups`) whose parent is the hook `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid: i32 = after
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == pid && String::from_utf8_lossy(&cmdline).contains("watch-groups") {
            found.push(child);
        }
    }
    found
}

/// Sends `signal` to process `pid`, which must exist.
#[track_caller]
pub fn send_signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|err| panic!("cannot send {signal} to {pid}: {err}"));
}

/// A child process killed when the test ends, however it ends.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `check` holds.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for a step to write a pid into `path`, then reads it.
#[track_caller]
pub fn pid_in(path: &Path) -> i32 {
    wait_for(
        &format!("a pid in {}", path.display()),
        Duration::from_secs(30),
        || std::fs::read_to_string(path).is_ok_and(|t| t.ends_with('\n')),
    );
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether a process is running (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Whether CI demands that every component be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A small HTTP server on loopback, for health checks, stopped when dropped.
pub struct HttpServer {
    child: std::process::Child,
    pub port: u16,
}

/// `python3 - MODE [DIR]`: `files` serves DIR (re-read at every request, so a `current` symlink
/// is followed), or the folder it was started in when DIR is absent (so it keeps serving the
/// release it started in, as an app server that resolved `current` once does); `500` answers
/// every request with an error; `hang` accepts connections and never answers; `record` keeps
/// each POST in DIR (`<n>.body`, and `<n>.meta` with its path and content type) and answers
/// 200. With `TLS_CERT` and `TLS_KEY` in its environment it speaks TLS.
const HTTP_SERVER: &str = r#"
import functools, http.server, os, socket, ssl, sys, time
mode = sys.argv[1]
if mode == "hang":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
    print(s.getsockname()[1], flush=True)
    time.sleep(600)
    sys.exit(0)
directory = sys.argv[2] if len(sys.argv) > 2 else None
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if mode == "500":
            self.send_response(500); self.end_headers(); self.wfile.write(b"boom"); return
        super().do_GET()
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if mode == "500":
            self.send_response(500); self.end_headers(); self.wfile.write(b"boom"); return
        n = len([f for f in os.listdir(directory) if f.endswith(".body")])
        with open(os.path.join(directory, f"{n}.meta"), "w") as meta:
            meta.write(f"{self.path}\n{self.headers.get('Content-Type')}\n")
        with open(os.path.join(directory, f"{n}.body"), "wb") as out:
            out.write(body)
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=directory))
if os.environ.get("TLS_CERT"):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpServer {
    pub fn start(mode: &str, dir: Option<&Path>, cwd: &Path) -> HttpServer {
        Self::spawn(mode, dir, cwd, None)
    }

    /// The same server speaking TLS with `tls`'s certificate for 127.0.0.1 and localhost.
    pub fn start_tls(mode: &str, dir: Option<&Path>, cwd: &Path, tls: &TestCa) -> HttpServer {
        Self::spawn(mode, dir, cwd, Some(tls))
    }

    fn spawn(mode: &str, dir: Option<&Path>, cwd: &Path, tls: Option<&TestCa>) -> HttpServer {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(HTTP_SERVER).arg(mode);
        if let Some(dir) = dir {
            cmd.arg(dir);
        }
        if let Some(tls) = tls {
            cmd.env("TLS_CERT", &tls.server_cert)
                .env("TLS_KEY", &tls.server_key);
        }
        let mut child = cmd
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the health-check tests (tests/run installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port from the test server: {line:?}"));
        HttpServer { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}/{path}", self.port)
    }
}

/// A private CA made with the real `openssl` command, and a server certificate it signed for
/// 127.0.0.1 and localhost.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(dir);
            run(&mut cmd, format!("openssl {}", args.join(" "))).success();
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ats-hook test CA",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        TestCa {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The `run:` script of the last step of the `deploy` job in contrib/github-actions/`file`,
/// after the checks every shipped workflow passes and `checks` (Python, with `doc`, `deploy`,
/// the job, and `env`, the step's environment, at hand).
pub fn workflow_deploy_script(file: &str, checks: &str) -> String {
    let workflow = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/github-actions")
        .join(file);
    let script = format!(
        r#"
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
jobs = doc["jobs"]
assert set(jobs) == {{"lint-and-test", "deploy"}}, jobs.keys()
deploy = jobs["deploy"]
assert deploy["needs"] == "lint-and-test"
assert "refs/heads/main" in deploy["if"]
step = deploy["steps"][-1]
env = step["env"]
{checks}
print(step["run"], end="")
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&workflow)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{file} does not parse as expected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
