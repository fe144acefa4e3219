//! The deploy configuration, `ats-hook.toml`.
//!
//! Values are checked while they are deserialized (durations, globs, paths, signal names, step
//! names), so that every mistake comes back from `toml` with the file's line and the key, the
//! way a user needs it when a push fails on a typo. Unknown keys are errors for the same reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

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
    pub notify: Option<Notify>,
    /// Where this config was read from.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySection {
    /// The deploy root; a relative path is taken from the config file's folder.
    pub root: PathBuf,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: StepName,
    pub run: String,
    #[serde(default = "default_step_timeout")]
    pub timeout: Duration,
    /// Run once the release is live (restarted and healthy) instead of before the switch:
    /// cache clears, notifications.
    #[serde(default)]
    pub after_switch: bool,
    /// For an `after_switch` step: whether its failure switches back to the previous release.
    #[serde(default)]
    pub rollback_on_failure: bool,
    /// Whether a push may skip it (`git push -o ats.skip=<name>`).
    #[serde(default)]
    pub skippable: bool,
    /// What the step builds (`.venv`, `node_modules`): kept in the output store under a key
    /// made of the step's `run`, these paths, its `inputs` at the pushed commit and its `key`
    /// command's output, and linked into every release with that key. When the key was built
    /// before, the step does not run.
    #[serde(default)]
    pub outputs: Vec<RelPath>,
    /// Files or folders of the commit the outputs are built from (`requirements.txt`,
    /// `package-lock.json`); only with `outputs`.
    #[serde(default)]
    pub inputs: Vec<RelPath>,
    /// A command whose output is part of the key, for what the commit does not hold: the
    /// interpreter's version (`python3 --version`), so a system upgrade rebuilds.
    pub key: Option<String>,
    /// Files or folders of the commit that define the database schema (`migrations/`): their
    /// content is each release's schema fingerprint, which rollbacks compare.
    #[serde(default)]
    pub migrations: Vec<RelPath>,
    /// A command that reverses this step's migrations when a release with another schema goes
    /// live again; run in the release being left, with `ATS_ROLLBACK_FROM` and
    /// `ATS_ROLLBACK_TO` (release ids) and `ATS_ROLLBACK_TO_DIR`.
    pub down: Option<String>,
}

impl Step {
    /// Whether what the step builds is kept in the output store.
    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    fn check_outputs(&self, shared: &[RelPath]) -> Result<()> {
        let name = &self.name;
        if !self.has_outputs() {
            if !self.inputs.is_empty() {
                bail!(
                    "`step.inputs` of step `{name}` needs `outputs`: a step is only skipped when what it built is stored under its inputs; name what it builds (`outputs = [\".venv\"]`), or drop `inputs` and it runs on every deploy"
                );
            }
            if self.key.is_some() {
                bail!("`step.key` of step `{name}` needs `outputs`: it is part of their key");
            }
            return Ok(());
        }
        if self.after_switch {
            bail!("`step.outputs` of step `{name}`: a step with outputs runs before the switch, not with `after_switch`");
        }
        if self.skippable {
            bail!("`step.skippable` of step `{name}`: a step with outputs cannot be skipped, or the release would lack them; it already does not run while its key is unchanged");
        }
        if self.key.as_deref().is_some_and(|key| key.trim().is_empty()) {
            bail!("`step.key` of step `{name}` is empty");
        }
        for path in &self.outputs {
            if let Some(link) = shared.iter().find(|s| s.overlaps(path)) {
                bail!(
                    "`step.outputs`: `{path}` of step `{name}` overlaps the shared path `{link}`"
                );
            }
            if let Some(input) = self.inputs.iter().find(|i| i.overlaps(path)) {
                bail!("`step.inputs`: `{input}` of step `{name}` overlaps its output `{path}`: an input comes from the commit, an output is built");
            }
        }
        Ok(())
    }
}

/// `[health]`: how to tell that the new release really serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// An `http://` or `https://` URL to GET.
    pub url: Option<String>,
    /// A PEM file of the CA certificates an `https://` URL's certificate is checked against,
    /// instead of the system's (a private CA); relative to the deploy root.
    pub ca_file: Option<PathBuf>,
    /// Do not check the certificate at all: only for a loopback URL.
    #[serde(default)]
    pub insecure: bool,
    /// The app's processes, which must all work in the new release: systemd units
    /// (`app.service`, every process of its control group) or pidfiles (the process and its
    /// children; relative to the deploy root).
    #[serde(default)]
    pub processes: Vec<String>,
    /// Or a shell command, run in the live release, that exits 0 when healthy.
    pub command: Option<String>,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// Text the body must contain; `{commit}` and `{short_commit}` stand for the deployed commit.
    pub expect_body: Option<String>,
    /// How long to keep probing before the release is declared unhealthy.
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    /// The pause between probes.
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    /// The limit for one probe.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: Duration,
    /// How many probes in a row must pass, `interval` apart: one answer may come from a worker
    /// of the old code that is still finishing.
    #[serde(default = "default_passes")]
    pub passes: u32,
    /// How long to wait, before probing, for the processes that ran in the previous release to
    /// exit or move to the new one after the restart; past it, the ones left are named.
    #[serde(default = "default_settle")]
    pub settle: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// A file of the release whose mtime is set (uWSGI `touch-reload`, mod_wsgi).
    pub touch: Option<RelPath>,
    #[serde(default)]
    pub systemctl: Vec<String>,
    #[serde(default)]
    pub systemctl_action: SystemctlAction,
    /// Run `systemctl` through `sudo -n`.
    #[serde(default)]
    pub sudo: bool,
    pub signal: Option<SignalAction>,
    /// With `signal`: a shell command that starts the app when the pidfile is missing or names
    /// a process that is gone (the first deploy, a crash), instead of signalling it.
    pub start: Option<String>,
    /// A shell command, run in the deploy root.
    pub command: Option<String>,
    /// The limit for each restart action that runs a process.
    #[serde(default = "default_restart_timeout")]
    pub timeout: Duration,
    /// What `start` and `command` receive: the deploy's environment, or a clean one.
    #[serde(default)]
    pub env: RestartEnv,
}

/// The environment of restart commands. A server they start keeps it until it is restarted
/// (a reload keeps it too), so what it holds matters.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartEnv {
    /// What steps get: the server's environment, `[env]`, the env file and the `ATS_*` variables.
    #[default]
    Deploy,
    /// Only the login basics of the server's environment (`PATH`, `HOME`, `USER`, `LOGNAME`,
    /// `SHELL`, `LANG`, `LC_*`, `TZ`, `XDG_RUNTIME_DIR`): no `[env]`, no env file, no `ATS_*`.
    Clean,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            touch: None,
            systemctl: Vec::new(),
            systemctl_action: SystemctlAction::default(),
            sudo: false,
            signal: None,
            start: None,
            command: None,
            timeout: default_restart_timeout(),
            env: RestartEnv::default(),
        }
    }
}

impl Restart {
    pub fn is_empty(&self) -> bool {
        self.touch.is_none()
            && self.systemctl.is_empty()
            && self.signal.is_none()
            && self.command.is_none()
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SystemctlAction {
    #[default]
    Restart,
    Reload,
    TryRestart,
    ReloadOrRestart,
}

impl SystemctlAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemctlAction::Restart => "restart",
            SystemctlAction::Reload => "reload",
            SystemctlAction::TryRestart => "try-restart",
            SystemctlAction::ReloadOrRestart => "reload-or-restart",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalAction {
    /// Absolute, or relative to the deploy root.
    pub pidfile: PathBuf,
    #[serde(default = "default_signal")]
    pub signal: SignalName,
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
fn default_step_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(900))
}
fn default_restart_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(120))
}
fn default_expect_status() -> u16 {
    200
}
fn default_health_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}
fn default_health_interval() -> Duration {
    Duration(std::time::Duration::from_millis(500))
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

/// `[notify]`: who hears about deploys and rollbacks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// A command, run in the deploy root with the deploy's record as JSON on its stdin.
    pub command: Option<String>,
    /// An `http://` or `https://` URL the record is POSTed to as JSON. Never printed whole.
    pub webhook: Option<String>,
    /// POST `{"text": "…"}` (Slack's incoming webhooks, and the chats that copy them) instead
    /// of the record.
    #[serde(default)]
    pub slack: bool,
    /// Which outcomes to tell.
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
    /// The limit for each of `command` and `webhook`.
    #[serde(default = "default_notify_timeout")]
    pub timeout: Duration,
    /// A PEM file of CA certificates for an `https://` webhook (a private CA); relative to the
    /// deploy root.
    pub ca_file: Option<PathBuf>,
}

/// The outcomes `[notify]` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyOn {
    /// A deploy that went live.
    Succeeded,
    /// A deploy that stopped before going live (a step, an interruption).
    Failed,
    /// A deploy that went live, failed its restart, health check or a step after the switch,
    /// and was switched back.
    RolledBack,
    /// `ats-hook rollback`, whatever its outcome.
    Rollback,
}

impl NotifyOn {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Succeeded => "succeeded",
            NotifyOn::Failed => "failed",
            NotifyOn::RolledBack => "rolled-back",
            NotifyOn::Rollback => "rollback",
        }
    }
}

fn default_notify_on() -> Vec<NotifyOn> {
    vec![
        NotifyOn::Succeeded,
        NotifyOn::Failed,
        NotifyOn::RolledBack,
        NotifyOn::Rollback,
    ]
}
fn default_notify_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

fn default_probe_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}
fn default_passes() -> u32 {
    2
}
fn default_settle() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}
fn default_signal() -> SignalName {
    SignalName(nix::sys::signal::Signal::SIGHUP)
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

    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "no config at `{}`: copy `config.example.toml` there, or run `ats-hook install`",
                path.display()
            ),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("failed to read config `{}`", path.display()))
            }
        };
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut config: Config = toml::from_str(text)
            .map_err(|err| anyhow::anyhow!("{}", err.to_string().trim_end()))
            .with_context(|| format!("invalid config `{}`", path.display()))?;
        config.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        if config.deploy.root.is_relative() {
            config.deploy.root = base.join(&config.deploy.root);
        }
        config
            .check()
            .with_context(|| format!("invalid config `{}`", path.display()))?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for step in &self.steps {
            if !seen.insert(step.name.as_str()) {
                bail!("`step.name`: two steps are named `{}`", step.name);
            }
            if step.run.trim().is_empty() {
                bail!("`step.run` of step `{}` is empty", step.name);
            }
            step.check_outputs(&self.shared.paths)?;
            if step.down.is_some() && step.migrations.is_empty() {
                bail!(
                    "`step.down` of step `{}` needs `migrations`: the paths whose change it reverses",
                    step.name
                );
            }
            if !step.migrations.is_empty() && step.after_switch {
                bail!(
                    "`step.migrations` of step `{}`: a migrating step runs before the switch, not with `after_switch`",
                    step.name
                );
            }
            if step.rollback_on_failure && !step.after_switch {
                bail!(
                    "`step.rollback_on_failure` of step `{}` needs `after_switch = true`: a step before the switch never changes what is live",
                    step.name
                );
            }
        }
        let mut built: Vec<(&RelPath, &str)> = Vec::new();
        for step in &self.steps {
            for path in &step.outputs {
                if let Some((other, by)) = built.iter().find(|(o, _)| o.overlaps(path)) {
                    bail!(
                        "`step.outputs`: `{path}` of step `{}` overlaps `{other}` of step `{by}`",
                        step.name
                    );
                }
                built.push((path, step.name.as_str()));
            }
        }
        if self.deploy.keep_releases < 2 {
            bail!(
                "`deploy.keep_releases` is {}: keep at least 2 (the live release and the one to roll back to)",
                self.deploy.keep_releases
            );
        }
        if let Some(health) = &self.health {
            match (&health.url, &health.command) {
                (Some(_), Some(_)) => bail!("`health`: set `url` or `command`, not both"),
                (None, None) if health.processes.is_empty() => {
                    bail!("`health`: set `url`, `command` or `processes`")
                }
                (Some(url), None) if !url.starts_with("http://") && !url.starts_with("https://") => bail!(
                    "`health.url` `{url}` must start with `http://` or `https://`"
                ),
                (Some(url), None) if health.insecure && !crate::sys::http::is_loopback(url) => bail!(
                    "`health.insecure` is only for a loopback URL (127.0.0.1, ::1, localhost), not `{}`: give the server's CA in `health.ca_file` instead",
                    crate::sys::http::redact(url)
                ),
                (Some(url), None) if !url.starts_with("https://") && (health.insecure || health.ca_file.is_some()) => bail!(
                    "`health.ca_file` and `health.insecure` are for an `https://` URL"
                ),
                (None, Some(_)) if health.insecure || health.ca_file.is_some() => bail!(
                    "`health.ca_file` and `health.insecure` are for `health.url`, not `command`"
                ),
                _ => {}
            }
        }
        if let Some(notify) = &self.notify {
            if notify.command.is_none() && notify.webhook.is_none() {
                bail!("`notify`: set `command`, `webhook`, or both");
            }
            if let Some(url) = &notify.webhook {
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    bail!(
                        "`notify.webhook` must start with `http://` or `https://`, not `{}`",
                        crate::sys::http::redact(url)
                    );
                }
                if crate::sys::http::host(url).is_none() {
                    bail!(
                        "`notify.webhook` has no host: `{}`",
                        crate::sys::http::redact(url)
                    );
                }
            }
            if notify.slack && notify.webhook.is_none() {
                bail!("`notify.slack` shapes what `webhook` posts: set `notify.webhook`");
            }
            if notify.ca_file.is_some() && notify.webhook.is_none() {
                bail!("`notify.ca_file` is for `notify.webhook`");
            }
            if notify.on.is_empty() {
                bail!("`notify.on` is empty: name at least one of succeeded, failed, rolled-back, rollback, or remove `[notify]`");
            }
        }
        if let Some(health) = &self.health {
            if health.passes == 0 {
                bail!("`health.passes` is 0: at least one probe must pass");
            }
            if health.processes.iter().any(|p| p.trim().is_empty()) {
                bail!("`health.processes` holds an empty name: give systemd units (`app.service`) or pidfiles");
            }
        }
        if self.restart.start.is_some() && self.restart.signal.is_none() {
            bail!("`restart.start` needs `restart.signal`: it starts the app when the pidfile names no running process");
        }
        for unit in &self.restart.systemctl {
            if unit.is_empty() || unit.starts_with('-') || unit.contains(char::is_whitespace) {
                bail!("`restart.systemctl`: `{unit}` is not a unit name");
            }
        }
        Ok(())
    }

    /// Steps that run before the switch, in order.
    pub fn steps_before_switch(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|step| !step.after_switch)
    }

    /// Steps that run once the release is live, in order.
    pub fn steps_after_switch(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|step| step.after_switch)
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

/// The longest duration a config may name.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A duration written like `"90s"`, `"10m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text).map_err(|err| {
            D::Error::custom(format!(
                "invalid duration `{text}` ({err}); write it like \"30s\", \"10m\" or \"1h\""
            ))
        })?;
        // Timeouts and pauses beyond a week are mistakes, and would overflow a deadline.
        if duration > MAX_DURATION {
            return Err(D::Error::custom(format!(
                "duration `{text}` is too long: at most {}",
                humantime::format_duration(MAX_DURATION)
            )));
        }
        Ok(Duration(duration))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size written like `"50 MiB"`, `"200MB"`, `"1 GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        text.trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| Size(size.as_u64()))
            .map_err(|err| {
                D::Error::custom(format!(
                    "invalid size `{text}` ({err}); write it like \"50 MiB\" or \"1 GiB\""
                ))
            })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// A glob over branch or tag names (`main`, `release/*`, `[0-9]*.[0-9]*.[0-9]*`).
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: globset::GlobMatcher,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern> {
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .build()
            .with_context(|| format!("invalid pattern `{text}`"))?;
        Ok(Pattern {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(D::Error::custom("a branch or tag pattern cannot be empty"));
        }
        Pattern::new(&text).map_err(|err| D::Error::custom(format!("{err:#}")))
    }
}

/// A path inside a release: relative, without `..`, never the release itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(PathBuf);

impl RelPath {
    pub fn new(text: &str) -> Result<RelPath> {
        let path = Path::new(text.trim_end_matches('/'));
        if text.is_empty() || path.as_os_str().is_empty() {
            bail!("a path cannot be empty");
        }
        let mut clean = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                _ => bail!("`{text}` must be a relative path inside the release, without `..`"),
            }
        }
        if clean.as_os_str().is_empty() {
            bail!("`{text}` names the release itself");
        }
        if clean.components().next() == Some(Component::Normal(".git".as_ref())) {
            bail!("`{text}` is inside `.git`");
        }
        Ok(RelPath(clean))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// Whether one of the two paths is the other or inside it.
    pub fn overlaps(&self, other: &RelPath) -> bool {
        self.0.starts_with(&other.0) || other.0.starts_with(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        RelPath::new(&text).map_err(|err| D::Error::custom(format!("{err:#}")))
    }
}

/// A step's name: short, printable, used as the output prefix and in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepName(String);

impl StepName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StepName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        let valid = !text.is_empty()
            && text.len() <= 32
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(D::Error::custom(format!(
                "invalid step name `{text}`: use 1 to 32 letters, digits, `-`, `_` or `.`"
            )));
        }
        Ok(StepName(text))
    }
}

/// A signal written `HUP` or `SIGHUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName(pub nix::sys::signal::Signal);

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        let upper = text.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        nix::sys::signal::Signal::from_str(&full)
            .map(SignalName)
            .map_err(|_| D::Error::custom(format!("unknown signal `{text}`")))
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/srv/app.git/ats-hook.toml"))
    }

    #[test]
    fn example_config_loads() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.deploy.keep_releases, 5);
        assert!(config.selects("refs/heads/main"));
        assert_eq!(config.steps_before_switch().count(), 3);
        assert!(config.steps[2].skippable && !config.steps[1].skippable);
        assert!(config.notify.is_none());
        assert!(config.deploy.recycle_releases);
        assert_eq!(
            config.steps[0].outputs,
            vec![RelPath::new(".venv").unwrap()]
        );
        assert_eq!(config.steps[0].key.as_deref(), Some("python3 --version"));
        assert_eq!(
            config.steps[0].inputs,
            vec![RelPath::new("requirements.txt").unwrap()]
        );
        assert_eq!(config.steps_after_switch().count(), 1);
        let health = config.health.as_ref().unwrap();
        assert_eq!(health.expect_body, None);
        assert_eq!(health.passes, 2);
        assert_eq!(health.settle.0, std::time::Duration::from_secs(10));
        assert_eq!(health.probe_timeout.0, std::time::Duration::from_secs(5));
        assert!(config.restart.start.is_some());
        assert_eq!(config.restart.env, RestartEnv::Clean);
        assert!(config.deploy.revision_file);
        assert_eq!(
            config.restart.timeout.0,
            std::time::Duration::from_secs(120)
        );
        assert_eq!(
            config.env_file(),
            Some(PathBuf::from("/srv/app/shared/.env"))
        );
    }

    #[test]
    fn minimal_config_has_defaults() {
        let config = parse("[deploy]\nroot = \"app\"\n").unwrap();
        assert_eq!(config.deploy.root, Path::new("/srv/app.git/app"));
        assert_eq!(config.default_ref().as_deref(), Some("refs/heads/main"));
        assert!(config.selects("refs/heads/main"));
        assert!(!config.selects("refs/heads/dev"));
        assert!(!config.selects("refs/tags/main"));
        assert!(config.restart.is_empty());
    }

    #[test]
    fn tag_glob_selects_version_tags_only() {
        let config =
            parse("[deploy]\nroot = \"/a\"\nbranches = []\ntags = \"[0-9]*.[0-9]*.[0-9]*\"\n")
                .unwrap();
        assert!(config.selects("refs/tags/1.2.3"));
        assert!(!config.selects("refs/tags/v1.2"));
        assert!(!config.selects("refs/heads/main"));
        assert_eq!(config.default_ref(), None);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[deploy]\nroot = \"/a\"\nkeep = 3\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("`/srv/app.git/ats-hook.toml`"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("unknown field `keep`"), "{text}");
    }

    #[test]
    fn bad_duration_names_line() {
        let err =
            parse("[deploy]\nroot = \"/a\"\n\n[[step]]\nname = \"x\"\nrun = \"true\"\ntimeout = \"ten\"\n")
                .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 7"), "{text}");
        assert!(text.contains("invalid duration `ten`"), "{text}");
    }

    #[test]
    fn paths_must_stay_inside_the_release() {
        for bad in ["../etc", "/etc", "a/../../b", ".", ".git/hooks"] {
            assert!(RelPath::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RelPath::new("./media/").unwrap().as_path(),
            Path::new("media")
        );
    }

    #[test]
    fn duplicate_step_names_are_refused() {
        let err = parse(
            "[deploy]\nroot = \"/a\"\n[[step]]\nname = \"a\"\nrun = \"true\"\n[[step]]\nname = \"a\"\nrun = \"true\"\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("two steps are named `a`"));
    }

    #[test]
    fn env_values_may_be_numbers() {
        let config =
            parse("[deploy]\nroot = \"/a\"\n[env]\nPORT = 8000\nfile = \"shared/.env\"\n").unwrap();
        assert_eq!(config.env.vars["PORT"], "8000");
        assert_eq!(config.env_file().unwrap(), Path::new("/a/shared/.env"));
    }

    #[test]
    fn the_env_file_stays_inside_the_deploy_root() {
        for file in ["/etc/nologin", "../other/.env", "shared/../../x", ""] {
            let err = parse(&format!(
                "[deploy]\nroot = \"/a\"\n[env]\nfile = {file:?}\n"
            ))
            .unwrap_err();
            assert!(
                format!("{err:#}").contains("must be a relative path inside the deploy root"),
                "{file}: {err:#}"
            );
        }
    }

    #[test]
    fn health_needs_one_http_url_or_command() {
        let base = "[deploy]\nroot = \"/a\"\n[health]\n";
        for (body, needle) in [
            ("", "set `url`, `command` or `processes`"),
            (
                "url = \"ftp://x/\"\n",
                "must start with `http://` or `https://`",
            ),
            ("url = \"http://x/\"\ncommand = \"true\"\n", "not both"),
            (
                "url = \"https://x/\"\ninsecure = true\n",
                "only for a loopback URL",
            ),
            (
                "url = \"http://127.0.0.1/\"\ninsecure = true\n",
                "are for an `https://` URL",
            ),
            (
                "command = \"true\"\nca_file = \"ca.pem\"\n",
                "not `command`",
            ),
        ] {
            let err = parse(&format!("{base}{body}")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{err:#}");
        }
        let config = parse(&format!("{base}url = \"http://127.0.0.1:1/\"\n")).unwrap();
        let health = config.health.unwrap();
        assert_eq!(health.expect_status, 200);
        assert_eq!(health.timeout.0, std::time::Duration::from_secs(30));
    }

    #[test]
    fn rollback_on_failure_needs_after_switch() {
        let err = parse(
            "[deploy]\nroot = \"/a\"\n[[step]]\nname = \"x\"\nrun = \"true\"\nrollback_on_failure = true\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("needs `after_switch = true`"));
    }

    #[test]
    fn outputs_are_checked() {
        let base = "[deploy]\nroot = \"/a\"\n[shared]\npaths = [\"log\"]\n[[step]]\nname = \"x\"\nrun = \"true\"\n";
        for (body, needle) in [
            (
                "inputs = [\"r.txt\"]\n",
                "`step.inputs` of step `x` needs `outputs`",
            ),
            (
                "key = \"python3 --version\"\n",
                "`step.key` of step `x` needs `outputs`",
            ),
            ("outputs = [\"log/x\"]\n", "overlaps the shared path `log`"),
            (
                "outputs = [\"a\"]\ninputs = [\"a/b\"]\n",
                "overlaps its output `a`",
            ),
            (
                "outputs = [\"a\"]\nafter_switch = true\n",
                "not with `after_switch`",
            ),
            (
                "outputs = [\"a/b\"]\n[[step]]\nname = \"y\"\nrun = \"true\"\noutputs = [\"a\"]\n",
                "`a` of step `y` overlaps `a/b` of step `x`",
            ),
        ] {
            let err = parse(&format!("{base}{body}")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{body}: {err:#}");
        }
        let config = parse(&format!(
            "{base}outputs = [\"node_modules/\"]\ninputs = [\"package-lock.json\"]\n"
        ))
        .unwrap();
        assert!(config.steps[0].has_outputs());
    }

    #[test]
    fn durations_that_would_overflow_a_deadline_are_refused() {
        for key in ["probe_timeout", "interval", "timeout"] {
            let err = parse(&format!(
                "[deploy]\nroot = \"/a\"\n[health]\nurl = \"http://127.0.0.1:1/\"\n{key} = \"18446744073709551615s\"\n"
            ))
            .unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("is too long: at most 7days"), "{text}");
            assert!(text.contains("line 5"), "{text}");
        }
    }

    #[test]
    fn sizes_parse_and_bad_ones_name_the_line() {
        let config = parse("[deploy]\nroot = \"/a\"\nlog_limit = \"2 MiB\"\n").unwrap();
        assert_eq!(config.deploy.log_limit, Size(2 << 20));
        let err = parse("[deploy]\nroot = \"/a\"\nlog_limit = \"lots\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("line 3") && text.contains("invalid size `lots`"),
            "{text}"
        );
    }

    #[test]
    fn untracked_is_gone_with_a_pointer_to_outputs() {
        let err = parse("[deploy]\nroot = \"/a\"\nuntracked = \"keep\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("`deploy.untracked` is gone"), "{text}");
        assert!(text.contains("`outputs`"), "{text}");
    }

    #[test]
    fn signal_names_parse() {
        let config = parse(
            "[deploy]\nroot = \"/a\"\n[restart]\nsignal = { pidfile = \"run/app.pid\", signal = \"usr2\" }\n",
        )
        .unwrap();
        assert_eq!(
            config.restart.signal.unwrap().signal.0,
            nix::sys::signal::Signal::SIGUSR2
        );
    }

    #[test]
    fn generated_configs_never_panic() {
        let valid = vec![
            EXAMPLE.as_bytes().to_vec(),
            b"[deploy]\nroot = \"app\"\n".to_vec(),
            b"[deploy]\nroot = \"/a\"\nkeep_releases = 3\nlog_limit = \"1 MiB\"\n[[step]]\nname = \"i\"\nrun = \"true\"\noutputs = [\".venv\"]\ninputs = [\"r.txt\"]\nkey = \"python3 --version\"\n[health]\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"1s\"\n".to_vec(),
        ];
        crate::sys::fuzz::check("configs", crate::sys::fuzz::inputs(valid), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            match parse(&text) {
                Ok(config) => proptest::prop_assert!(config.deploy.keep_releases >= 2),
                Err(err) => {
                    let text = format!("{err:#}");
                    proptest::prop_assert!(
                        text.starts_with("invalid config `/srv/app.git/ats-hook.toml`"),
                        "{}",
                        text
                    );
                }
            }
            Ok(())
        });
    }
}
