//! Confined steps (`deploy.confine_steps = true`): each step runs in a bubblewrap sandbox that
//! can write only the release it builds, the build folder of its outputs and the configured
//! shared paths, and cannot see the bare repository (its hooks), the rest of the deploy root
//! (other releases, the history), the home folders (the deploy user's `~/.ssh`, other apps'
//! roots under `/home` and `/srv`) or root's. The rest of the system is there, read-only, and
//! the network is left as it is (`pip install` needs it).
//!
//! A step still runs the pushed code as the deploy user; confined, that code can no longer
//! plant a hook, read a key, or change another release or the record of what was deployed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::state::layout::Layout;
use crate::sys::process::Cmd;

/// Folders hidden whole (each replaced by an empty one), when they exist.
const HIDDEN: [&str; 4] = ["/home", "/root", "/srv", "/var/www"];

/// The sandbox of one release's steps.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    /// Hidden, then the visible parts mounted back.
    args: Vec<OsString>,
    release: PathBuf,
}

impl Sandbox {
    /// The sandbox for steps building or running `release`, when the config confines them.
    pub fn for_release(config: &Config, release: &Path) -> Result<Option<Sandbox>> {
        if !config.deploy.confine_steps {
            return Ok(None);
        }
        let bwrap = find_bwrap()?;
        let layout = Layout::new(&config.deploy.root);
        let release = release
            .canonicalize()
            .with_context(|| format!("failed to resolve `{}`", release.display()))?;
        let root = layout
            .root()
            .canonicalize()
            .with_context(|| format!("failed to resolve `{}`", layout.root().display()))?;
        let mut args: Vec<OsString> = Vec::new();
        let mut add = |parts: &[&std::ffi::OsStr]| args.extend(parts.iter().map(OsString::from));
        add(&[
            "--die-with-parent".as_ref(),
            // No ioctl on the pusher's terminal, and every process of the step ends with it.
            "--new-session".as_ref(),
            "--unshare-pid".as_ref(),
            "--ro-bind".as_ref(),
            "/".as_ref(),
            "/".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
        ]);
        for hidden in HIDDEN {
            if Path::new(hidden).is_dir() {
                add(&["--tmpfs".as_ref(), hidden.as_ref()]);
            }
        }
        // Wherever they are: the repository beside its config, and the deploy root.
        let repo = config
            .path
            .parent()
            .filter(|dir| dir.join("HEAD").is_file() && dir.join("objects").is_dir())
            .and_then(|dir| dir.canonicalize().ok());
        for dir in repo.iter().chain(std::iter::once(&root)) {
            add(&["--tmpfs".as_ref(), dir.as_os_str()]);
        }
        // A home of its own, empty and private to the step (caches land there and go).
        if let Some(home) = std::env::var_os("HOME") {
            add(&["--dir".as_ref(), home.as_os_str()]);
        }
        for path in &config.deploy.confine_read {
            if path.exists() {
                add(&["--ro-bind".as_ref(), path.as_os_str(), path.as_os_str()]);
            }
        }
        // What a release links to: the stored builds (read-only) and the shared paths.
        let outputs = layout.outputs();
        if outputs.is_dir() {
            add(&[
                "--ro-bind".as_ref(),
                outputs.as_os_str(),
                outputs.as_os_str(),
            ]);
        }
        for path in &config.shared.paths {
            let shared = layout.shared().join(path.as_path());
            if std::fs::symlink_metadata(&shared).is_ok() {
                add(&["--bind".as_ref(), shared.as_os_str(), shared.as_os_str()]);
            }
        }
        add(&["--bind".as_ref(), release.as_os_str(), release.as_os_str()]);
        Ok(Some(Sandbox {
            bwrap,
            args,
            release,
        }))
    }

    /// `sh -c SCRIPT` in `dir` (the release, or a build folder of it), inside the sandbox.
    pub fn shell(&self, script: &str, dir: &Path) -> Result<Cmd> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("failed to resolve `{}`", dir.display()))?;
        let mut cmd = Cmd::new(&self.bwrap).args(self.args.iter().cloned());
        if !dir.starts_with(&self.release) {
            cmd = cmd.arg("--bind").arg(&dir).arg(&dir);
        }
        Ok(cmd
            .arg("--chdir")
            .arg(&dir)
            .args(["--", "sh", "-c"])
            .arg(script)
            .dir(dir))
    }
}

/// `bwrap` on the `PATH`.
fn find_bwrap() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("bwrap");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`deploy.confine_steps` runs steps in bubblewrap, which is not installed: `apt-get install bubblewrap`")
}
