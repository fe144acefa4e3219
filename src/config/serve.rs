//! `[serve]`: the handover. Two slots, each an address the app server binds; a deploy starts
//! the new release on the slot that is not live, proves it there, then switches the proxy.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{Duration, StepName};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    /// The two addresses, `127.0.0.1:8001` or `unix:/run/app/a.sock`: slot `a`, then slot `b`.
    pub slots: Vec<Address>,
    /// A systemd template unit (`app@.service`): slot `a` runs as `app@a.service`, reading
    /// `<root>/.ats-hook/slots/a.env` for the release to run and the address to bind.
    pub unit: Option<String>,
    /// Or a command that runs the server in the foreground, in the release's folder, with the
    /// release's environment; ats-hook detaches it and keeps its pid per slot.
    pub start: Option<String>,
    /// Run `systemctl` through `sudo -n` (the sudoers rule `install` writes).
    #[serde(default)]
    pub sudo: bool,
    /// How long the old slot may keep connections open after the switch (requests in flight).
    #[serde(default = "default_drain")]
    pub drain: Duration,
    /// After the stop signal, how long the old slot's server has to exit before it is killed.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Duration,
    pub proxy: Proxy,
    /// Processes that serve no HTTP (a task worker, a scheduler): restarted from the new
    /// release once it serves the site.
    #[serde(default, rename = "worker")]
    pub workers: Vec<Worker>,
    /// With `[compose]`: the slots run the web service's container (`compose.web`).
    #[serde(skip)]
    pub compose: Option<super::Compose>,
}

/// `[[serve.worker]]`: one process that serves no HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    pub name: StepName,
    /// A command run in the release's folder, in the foreground; ats-hook detaches it.
    pub start: Option<String>,
    /// Or a systemd unit, restarted (`systemctl restart`: stopped, then started).
    pub unit: Option<String>,
    /// After TERM, how long the running task has before KILL (default `serve.stop_timeout`).
    pub stop_timeout: Option<Duration>,
    /// Never two at once, not even for a moment (a scheduler like celery beat): the old one is
    /// stopped before the new one starts. Others start first, then the old one stops.
    #[serde(default)]
    pub singleton: bool,
}

/// How traffic is switched from one slot to the other.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// nginx: the file ats-hook writes, which the site's `upstream` block includes
    /// (`upstream app { include /etc/nginx/ats-hook/app/upstream.conf; }`).
    pub nginx: Option<PathBuf>,
    /// With `nginx`: the command that validates the configuration with the new file.
    #[serde(default = "default_nginx_test")]
    pub test: String,
    /// With `nginx`: the command that reloads it gracefully (old workers finish their requests).
    #[serde(default = "default_nginx_reload")]
    pub reload: String,
    /// Caddy: the admin API's URL of the `reverse_proxy` handler, by its `@id`
    /// (`http://127.0.0.1:2019/id/app`); its `upstreams` are set to the slot.
    pub caddy: Option<String>,
    /// Any other proxy: a shell command that points it at `{addr}` (also in `$ATS_SLOT_ADDR`).
    pub command: Option<String>,
    /// The public address to probe once switched: it must answer like the health check, with
    /// the new commit when `health.expect_body` names `{commit}`.
    pub url: String,
    /// The limit for each proxy command.
    #[serde(default = "default_proxy_timeout")]
    pub timeout: Duration,
}

/// A slot's address: what the server binds and the proxy forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Address {
    pub fn port(&self) -> Option<u16> {
        match self {
            Address::Tcp { port, .. } => Some(*port),
            Address::Unix(_) => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("`{text}`: a unix socket's path must be absolute"));
            }
            return Ok(Address::Unix(path));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            format!("`{text}` is not an address: give `127.0.0.1:8001` or `unix:/run/app/a.sock`")
        })?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("`{text}`: `{port}` is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            return Err(format!("`{text}`: `{host}` is not a host"));
        }
        Ok(Address::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The two slots' names, in the order of `slots`.
pub const SLOT_NAMES: [&str; 2] = ["a", "b"];

impl Serve {
    pub(super) fn check(&self, health: Option<&super::Health>, compose: bool) -> Result<()> {
        if self.slots.len() != 2 {
            bail!(
                "`serve.slots` holds {} address(es): give two, one per slot (`[\"127.0.0.1:8001\", \"127.0.0.1:8002\"]`)",
                self.slots.len()
            );
        }
        if self.slots[0] == self.slots[1] {
            bail!(
                "`serve.slots`: both slots are `{}`; the new release needs an address of its own",
                self.slots[0]
            );
        }
        match (&self.unit, &self.start) {
            // `[compose]` checks that neither is set: its web service runs on the slots.
            _ if compose => {}
            (Some(_), Some(_)) => bail!("`serve`: set `unit` or `start`, not both"),
            (None, None) => bail!(
                "`serve`: set `unit` (a systemd template, `app@.service`) or `start` (the command that runs the server on `{{addr}}`)"
            ),
            (Some(unit), None) if !unit.ends_with("@.service") || unit.contains(char::is_whitespace) || unit.starts_with('-') => bail!(
                "`serve.unit` `{unit}` is not a template unit: name it like `app@.service`, one instance per slot"
            ),
            (None, Some(start)) if !start.contains("{addr}") && !start.contains("{port}") && !start.contains("ATS_SLOT_ADDR") => bail!(
                "`serve.start` never names the slot's address: bind `{{addr}}` (or `{{port}}`), so each slot's server listens where the proxy sends it"
            ),
            _ => {}
        }
        if let Some(start) = &self.start {
            if start.contains("{port}") && self.slots.iter().any(|a| a.port().is_none()) {
                bail!("`serve.start` uses `{{port}}`, but a slot is a unix socket: use `{{addr}}`");
            }
        }
        let ways = [
            self.proxy.nginx.is_some(),
            self.proxy.caddy.is_some(),
            self.proxy.command.is_some(),
        ];
        match ways.iter().filter(|set| **set).count() {
            0 => bail!(
                "`serve.proxy`: set `nginx` (the upstream file the site includes), `caddy` (its admin API's URL of the handler) or `command` (which points the proxy at `{{addr}}`)"
            ),
            1 => {}
            _ => bail!("`serve.proxy`: set one of `nginx`, `caddy` and `command`"),
        }
        if let Some(file) = self.proxy.nginx.as_ref().filter(|f| !f.is_absolute()) {
            bail!(
                "`serve.proxy.nginx` `{}` must be an absolute path",
                file.display()
            );
        }
        if let Some(admin) = &self.proxy.caddy {
            if !admin.starts_with("http://") || !crate::sys::http::is_loopback(admin) {
                bail!(
                    "`serve.proxy.caddy` `{admin}` must be an `http://` URL on loopback: Caddy's admin API asks for no password"
                );
            }
        }
        let url = &self.proxy.url;
        if !url.starts_with("http://") && !url.starts_with("https://") {
            bail!("`serve.proxy.url` `{url}` must start with `http://` or `https://`");
        }
        let Some(health) = health else {
            bail!(
                "`serve` needs `[health]`: a new release takes traffic only once its slot answers; set `health.url = \"http://{{addr}}/health\"`"
            );
        };
        if let Some(url) = &health.url {
            if !url.contains("{addr}") && !url.contains("{port}") {
                bail!(
                    "`health.url` `{url}` does not name the slot: with `serve`, probe the new release on its own address (`http://{{addr}}/health`)"
                );
            }
            if self.slots.iter().any(|a| a.port().is_none()) {
                bail!("`health.url` cannot reach a unix socket slot: probe it with `health.command` (`curl --unix-socket \"$ATS_SLOT_SOCKET\" ...`)");
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for worker in &self.workers {
            if !names.insert(worker.name.as_str()) {
                bail!("`serve.worker` `{}` is declared twice", worker.name);
            }
            match (&worker.start, &worker.unit) {
                (Some(_), Some(_)) => bail!(
                    "`serve.worker` `{}`: set `start` or `unit`, not both",
                    worker.name
                ),
                (None, None) => bail!(
                    "`serve.worker` `{}`: set `start` (a command) or `unit` (a systemd unit)",
                    worker.name
                ),
                (None, Some(unit))
                    if unit.starts_with('-')
                        || unit.contains(char::is_whitespace)
                        || !unit.contains('.') =>
                {
                    bail!(
                        "`serve.worker` `{}`: `{unit}` is not a unit name (`app-worker.service`)",
                        worker.name
                    )
                }
                _ => {}
            }
        }
        if !health.processes.is_empty() {
            bail!("`health.processes` is for the restart model: with `serve`, ats-hook watches the slot's own server");
        }
        Ok(())
    }
}

fn default_drain() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

fn default_stop_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

fn default_proxy_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

fn default_nginx_test() -> String {
    "nginx -t -q".to_string()
}

fn default_nginx_reload() -> String {
    "nginx -s reload".to_string()
}
