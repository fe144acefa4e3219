//! `[restart]`: how the app picks up a new release.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{Duration, RelPath, SignalName};

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
    pub(super) fn check(&self) -> Result<()> {
        if self.start.is_some() && self.signal.is_none() {
            bail!("`restart.start` needs `restart.signal`: it starts the app when the pidfile names no running process");
        }
        for unit in &self.systemctl {
            if unit.is_empty() || unit.starts_with('-') || unit.contains(char::is_whitespace) {
                bail!("`restart.systemctl`: `{unit}` is not a unit name");
            }
        }
        Ok(())
    }

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

fn default_restart_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(120))
}

fn default_signal() -> SignalName {
    SignalName(nix::sys::signal::Signal::SIGHUP)
}
