//! `[health]`: how to tell that the new release really serves.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::Duration;

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

fn default_expect_status() -> u16 {
    200
}

fn default_health_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

fn default_health_interval() -> Duration {
    Duration(std::time::Duration::from_millis(500))
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

impl Health {
    pub(super) fn check(&self) -> Result<()> {
        match (&self.url, &self.command) {
            (Some(_), Some(_)) => bail!("`health`: set `url` or `command`, not both"),
            (None, None) if self.processes.is_empty() => {
                bail!("`health`: set `url`, `command` or `processes`")
            }
            (Some(url), None) if !url.starts_with("http://") && !url.starts_with("https://") => bail!(
                "`health.url` `{url}` must start with `http://` or `https://`"
            ),
            (Some(url), None) if self.insecure && !crate::sys::http::is_loopback(url) => bail!(
                "`health.insecure` is only for a loopback URL (127.0.0.1, ::1, localhost), not `{}`: give the server's CA in `health.ca_file` instead",
                crate::sys::http::redact(url)
            ),
            (Some(url), None) if !url.starts_with("https://") && (self.insecure || self.ca_file.is_some()) => bail!(
                "`health.ca_file` and `health.insecure` are for an `https://` URL"
            ),
            (None, Some(_)) if self.insecure || self.ca_file.is_some() => bail!(
                "`health.ca_file` and `health.insecure` are for `health.url`, not `command`"
            ),
            _ => {}
        }
        if self.passes == 0 {
            bail!("`health.passes` is 0: at least one probe must pass");
        }
        if self.processes.iter().any(|p| p.trim().is_empty()) {
            bail!("`health.processes` holds an empty name: give systemd units (`app.service`) or pidfiles");
        }
        Ok(())
    }
}
