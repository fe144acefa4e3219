//! The deploy root on disk.
//!
//! ```text
//! <root>/releases/<id>/        one folder per release
//! <root>/current -> releases/<id>
//! <root>/shared/               state that outlives releases
//! <root>/outputs/<step>/       what steps built, shared by the releases with the same key
//! <root>/.ats-hook/lock        the deploy lock, holding who has it
//! <root>/.ats-hook/deploys.jsonl, logs/<id>.log, index/<id>
//! ```
//!
//! Every path the pipeline touches is named here, so the layout is written down once.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Refuses root on a deploy root another user owns: what it made would be root's (the
    /// releases, `current`, the history), the deploy user could no longer change them, and a
    /// server a restart starts would run as root.
    pub fn refuse_root_on_a_users_root(&self) -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let Ok(meta) = std::fs::metadata(&self.root) else {
            return Ok(());
        };
        let uid = std::os::unix::fs::MetadataExt::uid(&meta);
        if uid == 0 {
            return Ok(());
        }
        let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|user| user.name)
            .unwrap_or_else(|| uid.to_string());
        Err(refusal(&self.root, &owner))
    }

    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub fn release(&self, id: &str) -> PathBuf {
        self.releases().join(id)
    }
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }
    pub fn outputs(&self) -> PathBuf {
        self.root.join("outputs")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }
    pub fn lock_file(&self) -> PathBuf {
        self.state().join("lock")
    }
    /// The process group of the child a deploy is running, while it runs.
    pub fn group_file(&self) -> PathBuf {
        self.state().join("running-group")
    }
    pub fn deploys_file(&self) -> PathBuf {
        self.state().join("deploys.jsonl")
    }
    pub fn log_file(&self, id: &str) -> PathBuf {
        self.state().join("logs").join(format!("{id}.log"))
    }
    pub fn index_file(&self, id: &str) -> PathBuf {
        self.state().join("index").join(id)
    }
    /// The bare cache of one submodule URL (see `submodules`).
    pub fn submodule_cache(&self, name: &str) -> PathBuf {
        self.state().join("submodules").join(name)
    }
    /// The folder stamps of a release, beside its index (see `stamps`).
    pub fn stamps_file(&self, id: &str) -> PathBuf {
        self.state().join("index").join(format!("{id}.folders"))
    }

    /// With `[compose]`: a release's files (`<release>.yaml`, its override; `.env`; the
    /// `.images.json` of its build).
    pub fn compose_dir(&self) -> PathBuf {
        self.state().join("compose")
    }
    pub fn compose_file(&self, id: &str, ext: &str) -> PathBuf {
        self.compose_dir().join(format!("{id}.{ext}"))
    }

    /// Scheduled jobs: what is installed, each job's lock, the runs' history and logs.
    pub fn jobs_dir(&self) -> PathBuf {
        self.state().join("jobs")
    }
    /// Held exclusively while a deploy goes live; a job takes it shared to find the live
    /// release, so it never starts in the middle of a switch.
    pub fn switch_lock(&self) -> PathBuf {
        self.state().join("switch.lock")
    }

    /// Creates the folders a deploy writes into.
    pub fn create(&self) -> Result<()> {
        for dir in [
            self.releases(),
            self.shared(),
            self.state().join("logs"),
            self.state().join("index"),
        ] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
        }
        // The history, the logs and the locks are the deploy user's alone (a log holds what
        // steps printed); older roots made it 0755.
        let state = self.state();
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        if std::fs::metadata(&state).is_ok_and(|m| {
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777 != 0o700
        }) {
            std::fs::set_permissions(&state, private)
                .with_context(|| format!("failed to make `{}` private", state.display()))?;
        }
        Ok(())
    }

    /// The id of the live release, if `current` exists.
    pub fn live_release(&self) -> Result<Option<String>> {
        let current = self.current();
        match std::fs::symlink_metadata(&current) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("failed to inspect `{}`", current.display()))
            }
            Ok(meta) if !meta.file_type().is_symlink() => bail!(
                "`{}` is not a symlink: move it away so ats-hook can manage it",
                current.display()
            ),
            Ok(_) => {}
        }
        let target = std::fs::read_link(&current)
            .with_context(|| format!("failed to read link `{}`", current.display()))?;
        Ok(target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned()))
    }

    /// Release ids on disk, oldest first (ids start with a UTC timestamp).
    pub fn release_ids(&self) -> Result<Vec<String>> {
        let dir = self.releases();
        let entries = match std::fs::read_dir(&dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.with_context(|| format!("failed to list `{}`", dir.display()))?,
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("failed to list `{}`", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// The deploy root's folder of ats-hook's own state.
pub const STATE_DIR: &str = ".ats-hook";

/// Why root does not deploy on `path`, a deploy user's, and the command that works.
pub fn refusal(path: &Path, owner: &str) -> anyhow::Error {
    let args: Vec<String> = std::env::args().collect();
    let hook = args.iter().take(2).any(|arg| arg.ends_with("-receive"));
    let fix = if hook {
        format!("push as `{owner}` (over SSH, with a deploy key), not as root")
    } else {
        format!(
            "run it as the owner: `sudo -u {owner} ats-hook {}`",
            args[1..].join(" ")
        )
    };
    anyhow::anyhow!(
        "refusing to run as root on `{}`, which belongs to `{owner}`: what root makes there would be root's, and an app server it starts would run as root; {fix}",
        path.display(),
    )
}
