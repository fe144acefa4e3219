//! A clone that pushes to a test server with the real `git` client, in the hermetic
//! environment of `command`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::*;

/// A working clone that commits and pushes.
pub struct Clone {
    pub dir: PathBuf,
    pub home: PathBuf,
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
