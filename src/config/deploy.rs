//! `[deploy]`: where releases go, which refs deploy, how many releases are kept, how pushes
//! queue; and `[shared]` and `[env]`, what every release shares and gets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer};

use super::{Duration, Pattern, RelPath, Size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySection {
    /// The deploy root; a relative path is taken from the config file's folder.
    pub root: PathBuf,
    /// The app's folder in the repository (`backend`): a release holds that folder's tree as
    /// its root, and a push that leaves it unchanged deploys nothing. None: the whole tree.
    #[serde(default)]
    pub path: Option<RelPath>,
    /// More folders of the repository the app uses (`libs`), with `path`: each is in every
    /// release at its own path, and a push that changes one deploys the app too.
    #[serde(default)]
    pub paths: Vec<RelPath>,
    #[serde(default = "default_branches")]
    pub branches: Vec<Pattern>,
    pub tags: Option<Pattern>,
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: Duration,
    /// Build a new release from an old one that pruning would remove next, touching only the
    /// files that differ, instead of checking the whole tree out again. Its untracked files are
    /// removed, so it starts from its commit alone, as a fresh checkout would.
    #[serde(default = "default_true")]
    pub recycle_releases: bool,
    /// On a deploy root on btrfs, make each release checked out whole a subvolume, and build
    /// a release that has no old release to reuse from a snapshot of the live one (see
    /// `release::snapshot`), with `recycle_releases`. False keeps releases plain folders (a
    /// snapshot of the subvolume holding the deploy root then includes them).
    #[serde(default = "default_true")]
    pub snapshot_releases: bool,
    /// How much step output one deploy's log keeps; what comes past it is counted, not kept.
    #[serde(default = "default_log_limit")]
    pub log_limit: Size,
    /// Write the deployed commit into `REVISION` at the top of each release, so the app can
    /// tell which code it runs, rightly after a reload too.
    #[serde(default = "default_true")]
    pub revision_file: bool,
    /// When pushes of one branch queue for the lock: only the newest deploys (`newest`), or
    /// each in turn (`all`).
    #[serde(default)]
    pub queue: Queue,
    /// Check submodules out into each release, at the commits the superproject records,
    /// fetched from the URLs in `.gitmodules` into caches under `.ats-hook/submodules/`.
    #[serde(default)]
    pub submodules: bool,
    /// The URL prefixes submodules may be fetched from (`git@github.com:acme/`, `/srv/git/`):
    /// `.gitmodules` is the pusher's to write, so no other URL is ever fetched. None by default.
    #[serde(default)]
    pub submodule_urls: Vec<String>,
    /// Write each Git LFS pointer of the tree as the object it names, from the repository's LFS
    /// store (which `git lfs push` fills over SSH); a pointer whose object is missing fails the
    /// deploy. False leaves pointers as they are.
    #[serde(default = "default_true")]
    pub lfs: bool,
    /// Run each step in a bubblewrap sandbox that can write only its release, its build and
    /// the shared paths, and sees no home folder, repository or other release (see `confine`).
    #[serde(default)]
    pub confine_steps: bool,
    /// Folders confined steps may still read, though hidden otherwise (a toolchain in the
    /// deploy user's home: `/home/deployer/.pyenv`).
    #[serde(default)]
    pub confine_read: Vec<PathBuf>,
    /// Gone: a reused release once could keep its untracked files so that steps could skip
    /// themselves, which let a release run with what another commit built. Steps now declare
    /// their `outputs`; the key explains the way.
    #[serde(default)]
    pub untracked: Option<UntrackedIsGone>,
}

/// `deploy.untracked`, which no value deserializes to: any is an error that says why.
#[derive(Debug)]
pub enum UntrackedIsGone {}

impl<'de> Deserialize<'de> for UntrackedIsGone {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "`deploy.untracked` is gone: a release always starts from its commit alone. To reuse \
         what a step builds (a virtualenv, `node_modules`), give the step `outputs` (and \
         `inputs`): see `config.example.toml`",
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSection {
    #[serde(default)]
    pub paths: Vec<RelPath>,
}

/// `[env]`: variables for steps and restart commands, and an optional env file.
#[derive(Debug, Default)]
pub struct EnvSection {
    /// KEY=VALUE lines, a path inside the deploy root (so that it is the deploy user's).
    pub file: Option<RelPath>,
    pub vars: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for EnvSection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
        let mut section = EnvSection::default();
        for (key, value) in table {
            if key == "file" {
                match value {
                    toml::Value::String(path) => {
                        section.file = Some(RelPath::new(&path).map_err(|_| {
                            D::Error::custom(format!(
                                "`env.file = {path:?}` must be a relative path inside the deploy root, without `..` (such as `shared/.env`): the env file is the deploy user's"
                            ))
                        })?)
                    }
                    _ => return Err(D::Error::custom("`env.file` must be a path (a string)")),
                }
                continue;
            }
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(D::Error::custom(format!(
                    "`env.{key}` is not a variable name"
                )));
            }
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(D::Error::custom(format!(
                        "`env.{key}` must be a string, number or boolean"
                    )))
                }
            };
            section.vars.insert(key, value);
        }
        Ok(section)
    }
}

/// `deploy.queue`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Queue {
    /// A push overtaken while it waited stops; the newest deploys.
    #[default]
    Newest,
    /// Every push deploys, in the order they get the lock.
    All,
}

fn default_branches() -> Vec<Pattern> {
    vec![Pattern::new("main").expect("`main` is a valid pattern")]
}

fn default_log_limit() -> Size {
    Size(50 << 20)
}

fn default_true() -> bool {
    true
}

fn default_keep_releases() -> usize {
    5
}

fn default_lock_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(600))
}

impl DeploySection {
    pub(super) fn check(&self) -> Result<()> {
        if self.keep_releases < 2 {
            bail!(
                "`deploy.keep_releases` is {}: keep at least 2 (the live release and the one to roll back to)",
                self.keep_releases
            );
        }
        if self.path.is_none() && !self.paths.is_empty() {
            bail!(
                "`deploy.paths` needs `deploy.path`: without it a release holds the whole repository already"
            );
        }
        for (n, extra) in self.paths.iter().enumerate() {
            if let Some(path) = self.path.as_ref().filter(|p| p.overlaps(extra)) {
                bail!("`deploy.paths` names `{extra}`, which overlaps the app's folder `{path}`");
            }
            if let Some(other) = self.paths[..n].iter().find(|p| p.overlaps(extra)) {
                bail!("`deploy.paths` names `{other}` and `{extra}`, which overlap");
            }
        }
        Ok(())
    }
}
