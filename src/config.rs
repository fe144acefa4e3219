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
use serde::{Deserialize, Deserializer};

/// The file name looked up in the bare repository when no other config is named.
pub const FILE_NAME: &str = "ats-hook.toml";

/// The documented template; `config.example.toml` at the repository root.
pub const EXAMPLE: &str = include_str!("../config.example.toml");

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
    /// files that differ, instead of checking the whole tree out again.
    #[serde(default = "default_true")]
    pub recycle_releases: bool,
    /// What happens to files a recycled release holds that its commit does not track (build
    /// output such as `node_modules/` or `.venv/`): `remove` them (the default), so a release
    /// starts from its tree alone as a fresh checkout would, or `keep` them, so steps can build
    /// on them and skip themselves when their inputs did not change.
    #[serde(default)]
    pub untracked: Untracked,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Untracked {
    Keep,
    #[default]
    Remove,
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
    /// KEY=VALUE lines, relative to the deploy root when not absolute.
    pub file: Option<PathBuf>,
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
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
    /// Files or folders of the commit this step depends on: when they are the same as when the
    /// step last ran in the release this one is built from, the step is skipped.
    #[serde(default)]
    pub inputs: Vec<RelPath>,
}

/// `[health]`: how to tell that the new release really serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// An `http://` URL to GET.
    pub url: Option<String>,
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
    /// A shell command run in the new release.
    pub command: Option<String>,
    /// The limit for each restart action that runs a process.
    #[serde(default = "default_restart_timeout")]
    pub timeout: Duration,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            touch: None,
            systemctl: Vec::new(),
            systemctl_action: SystemctlAction::default(),
            sudo: false,
            signal: None,
            command: None,
            timeout: default_restart_timeout(),
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
    Duration(std::time::Duration::from_secs(1))
}
fn default_probe_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(5))
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
            if step.rollback_on_failure && !step.after_switch {
                bail!(
                    "`step.rollback_on_failure` of step `{}` needs `after_switch = true`: a step before the switch never changes what is live",
                    step.name
                );
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
                (None, None) => bail!("`health`: set `url` or `command`"),
                (Some(url), None) if !url.starts_with("http://") => bail!(
                    "`health.url` `{url}` must start with `http://`: probe the app itself, on loopback"
                ),
                _ => {}
            }
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
            .map(|file| self.deploy.root.join(file))
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
                    toml::Value::String(path) => section.file = Some(PathBuf::from(path)),
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

/// A duration written like `"90s"`, `"10m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(Duration)
            .map_err(|err| {
                D::Error::custom(format!(
                    "invalid duration `{text}` ({err}); write it like \"30s\", \"10m\" or \"1h\""
                ))
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
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
        assert_eq!(config.steps_before_switch().count(), 2);
        assert!(config.deploy.recycle_releases);
        assert_eq!(config.deploy.untracked, Untracked::Remove);
        assert_eq!(
            config.steps[0].inputs,
            vec![RelPath::new("requirements.txt").unwrap()]
        );
        assert_eq!(config.steps_after_switch().count(), 1);
        let health = config.health.as_ref().unwrap();
        assert_eq!(health.expect_body.as_deref(), Some("{commit}"));
        assert_eq!(health.probe_timeout.0, std::time::Duration::from_secs(5));
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
    fn health_needs_one_http_url_or_command() {
        let base = "[deploy]\nroot = \"/a\"\n[health]\n";
        for (body, needle) in [
            ("", "set `url` or `command`"),
            ("url = \"https://x/\"\n", "must start with `http://`"),
            ("url = \"http://x/\"\ncommand = \"true\"\n", "not both"),
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
}
