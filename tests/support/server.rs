//! A temporary server: a bare repository with ats-hook as its hook (or gate), a deploy root
//! beside it, and what a test reads back from them (releases, `current`, the history).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tempfile::TempDir;

use super::*;

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

    /// Lets pushes pass `-o` options, as `ats-hook install` leaves the repository.
    pub fn advertise_push_options(&self) -> &Self {
        let mut cmd = command("git", self.path());
        cmd.args(["config", "receive.advertisePushOptions", "true"])
            .current_dir(&self.bare);
        run(&mut cmd, "git config").success();
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

    /// Starts `ats-hook ARGS --repo app.git` without waiting.
    pub fn ats_child(&self, args: &[&str]) -> std::process::Child {
        command(BIN, self.path())
            .args(args)
            .arg("--repo")
            .arg(&self.bare)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Replaces the post-receive hook with a shell script (one that wraps ats-hook).
    pub fn hook_script(&self, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let hook = self.bare.join("hooks/post-receive");
        std::fs::remove_file(&hook).unwrap();
        std::fs::write(&hook, script).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
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
