//! `[notify]`: who hears about deploys and rollbacks.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::Duration;

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
    /// A run of a scheduled job that failed or timed out.
    JobFailed,
}

impl NotifyOn {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Succeeded => "succeeded",
            NotifyOn::Failed => "failed",
            NotifyOn::RolledBack => "rolled-back",
            NotifyOn::Rollback => "rollback",
            NotifyOn::JobFailed => "job-failed",
        }
    }
}

fn default_notify_on() -> Vec<NotifyOn> {
    vec![
        NotifyOn::Succeeded,
        NotifyOn::Failed,
        NotifyOn::RolledBack,
        NotifyOn::Rollback,
        NotifyOn::JobFailed,
    ]
}

fn default_notify_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

impl Notify {
    pub(super) fn check(&self) -> Result<()> {
        if self.command.is_none() && self.webhook.is_none() {
            bail!("`notify`: set `command`, `webhook`, or both");
        }
        if let Some(url) = &self.webhook {
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
        if self.slack && self.webhook.is_none() {
            bail!("`notify.slack` shapes what `webhook` posts: set `notify.webhook`");
        }
        if self.ca_file.is_some() && self.webhook.is_none() {
            bail!("`notify.ca_file` is for `notify.webhook`");
        }
        if self.on.is_empty() {
            bail!("`notify.on` is empty: name at least one of succeeded, failed, rolled-back, rollback, or remove `[notify]`");
        }
        Ok(())
    }
}
