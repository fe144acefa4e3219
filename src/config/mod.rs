//! The deploy configuration, `ats-hook.toml`.
//!
//! Values are checked while they are deserialized (durations, globs, paths, signal names, step
//! names), so that every mistake comes back from `toml` with the file's line and the key, the
//! way a user needs it when a push fails on a typo. Unknown keys are errors for the same reason.
//!
//! One file per section (`deploy`, `step`, `restart`, `health`, `serve`, `compose`, `notify`,
//! `jobs`; a release's `schedule.toml` too), each with its own
//! checks; the value types in `values`; this module reads the file. Uses `sys` only.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

mod apps;
mod calendar;
mod compose;
mod deploy;
mod health;
mod jobs;
mod notify;
mod restart;
mod serve;
mod step;
mod values;

pub use apps::{App, Apps};
pub use calendar::Calendar;
pub use compose::Compose;
pub use deploy::{DeploySection, EnvSection, Queue, SharedSection, UntrackedIsGone};
pub use health::Health;
pub use jobs::{Installer, Job, JobName, JobsSection, Overlap, Schedule, SCHEDULE_FILE};
pub use notify::{Notify, NotifyOn};
pub use restart::{Restart, RestartEnv, SignalAction, SystemctlAction};
pub use serve::{Address, Proxy, Serve, Worker, SLOT_NAMES};
pub use step::Step;
pub use values::{plain_name, Duration, Pattern, RelPath, SignalName, Size, StepName};

/// The file name looked up in the bare repository when no other config is named.
pub const FILE_NAME: &str = "ats-hook.toml";

/// The documented template; `config.example.toml` at the repository root.
pub const EXAMPLE: &str = include_str!("../../config.example.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub deploy: DeploySection,
    #[serde(default)]
    pub shared: SharedSection,
    #[serde(default)]
    pub env: EnvSection,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub restart: Restart,
    pub health: Option<Health>,
    /// The handover: two slots and a proxy; without it, the release goes live by a restart.
    pub serve: Option<Serve>,
    /// An app run by Docker Compose.
    pub compose: Option<Compose>,
    pub notify: Option<Notify>,
    /// How the release's scheduled jobs are installed.
    #[serde(default)]
    pub jobs: JobsSection,
    /// Where this config was read from.
    #[serde(skip)]
    pub path: PathBuf,
    /// The app's name, when the file holds several (`[apps.NAME]`).
    #[serde(skip)]
    pub app: Option<String>,
    /// Whether the app's sections are in `path` among others' (`[apps.NAME.…]`), so that a
    /// command reading `path` again must name it; an app of its own file is that file's one app.
    #[serde(skip)]
    pub app_inline: bool,
}

impl Config {
    /// Where the config is: the explicit path (`--config`, `$ATS_HOOK_CONFIG`), else
    /// `ats-hook.toml` in the bare repository.
    pub fn locate(explicit: Option<&Path>, repo_dir: &Path) -> PathBuf {
        match explicit {
            Some(path) => path.to_path_buf(),
            None => repo_dir.join(FILE_NAME),
        }
    }

    /// The config of a file of one app (see `Apps` for a file of several).
    pub fn load(path: &Path) -> Result<Config> {
        Config::parse(&read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text)
            .map_err(|err| anyhow::anyhow!("{}", err.to_string().trim_end()))
            .with_context(|| format!("invalid config `{}`", path.display()))?;
        config.finish(path)
    }

    /// A config as read from `path`, its paths resolved and its values checked.
    fn finish(self, path: &Path) -> Result<Config> {
        let mut config = self;
        config.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        if config.deploy.root.is_relative() {
            config.deploy.root = base.join(&config.deploy.root);
        }
        config
            .check()
            .with_context(|| format!("invalid config `{}`", path.display()))?;
        // The slots start the web service's container instead of a server of their own.
        if let (Some(serve), Some(compose)) = (&mut config.serve, &config.compose) {
            serve.compose = Some(compose.clone());
        }
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        step::check_all(&self.steps, &self.shared.paths)?;
        self.deploy.check()?;
        if let Some(health) = &self.health {
            health.check()?;
        }
        if let Some(notify) = &self.notify {
            notify.check()?;
        }
        if let Some(serve) = &self.serve {
            serve.check(self.health.as_ref(), self.compose.is_some())?;
        }
        if let Some(compose) = &self.compose {
            compose.check(self.serve.as_ref())?;
        }
        self.restart.check()
    }

    /// Steps that run before the switch, in order.
    pub fn steps_before_switch(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|step| !step.after_switch)
    }

    /// Steps that run once the release is live, in order.
    pub fn steps_after_switch(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|step| step.after_switch)
    }

    /// What a command run later (a job, the spare's preparer) needs besides `--config path`
    /// to read this app again: `--app NAME` for an app among others in its file.
    pub fn app_args(&self) -> Vec<String> {
        match (&self.app, self.app_inline) {
            (Some(app), true) => vec!["--app".to_string(), app.clone()],
            _ => Vec::new(),
        }
    }

    /// The env file's path, resolved against the deploy root.
    pub fn env_file(&self) -> Option<PathBuf> {
        self.env
            .file
            .as_ref()
            .map(|file| self.deploy.root.join(file.as_path()))
    }

    /// Whether a ref (full name) is one this config deploys.
    pub fn selects(&self, refname: &str) -> bool {
        if let Some(branch) = refname.strip_prefix("refs/heads/") {
            return self.deploy.branches.iter().any(|p| p.matches(branch));
        }
        if let Some(tag) = refname.strip_prefix("refs/tags/") {
            return self.deploy.tags.as_ref().is_some_and(|p| p.matches(tag));
        }
        false
    }

    /// The branch a manual `deploy` uses when none is named: the first configured branch
    /// that is a plain name.
    pub fn default_ref(&self) -> Option<String> {
        self.deploy
            .branches
            .iter()
            .find(|p| !p.as_str().contains(['*', '?', '[', '{']))
            .map(|p| format!("refs/heads/{}", p.as_str()))
    }

    /// One line saying what this config deploys, for messages.
    pub fn describe_selection(&self) -> String {
        let branches: Vec<&str> = self.deploy.branches.iter().map(Pattern::as_str).collect();
        let mut text = format!("branches {}", branches.join(", "));
        if let Some(tags) = &self.deploy.tags {
            text.push_str(&format!("; tags {}", tags.as_str()));
        }
        text
    }
}

/// A config file's text.
fn read(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "no config at `{}`: copy `config.example.toml` there, or run `ats-hook install`",
            path.display()
        ),
        Err(err) => Err(err).with_context(|| format!("failed to read config `{}`", path.display())),
    }
}

#[cfg(test)]
mod tests;
