//! The two slots of the handover: which release each runs, how its server is started (a
//! systemd template instance, or a detached command with its pid kept), whether it still runs,
//! how it drains and stops.
//!
//! ```text
//! <root>/.ats-hook/slots/live      the slot the proxy was last told to send traffic to
//! <root>/.ats-hook/slots/a.json    what slot a runs: release, commit, address, pid or unit
//! <root>/.ats-hook/slots/a.env     for the unit: ATS_RELEASE_DIR, ATS_SLOT_ADDR, … (0600)
//! <root>/.ats-hook/slots/a.log     for the command: the server's output
//! ```
//!
//! A slot's file is written before its server starts, so that a run killed at any instant
//! leaves a record of what may be running; the next run stops what no slot should run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::compose::Project;
use super::containers;
use super::daemon::{self, Daemon};
use crate::config::{Address, Serve, SLOT_NAMES};
use crate::state::layout::Layout;
use crate::sys::files::write_atomically;
use crate::sys::output;
use crate::sys::process::Cmd;
use crate::sys::{procs, sockets};

/// One of the two slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: &'static str,
    pub addr: Address,
}

/// What a slot runs, as its file records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Running {
    pub release: String,
    pub commit: String,
    pub addr: String,
    /// The started command (`pid`, `started`): it leads its process group. None for a unit.
    #[serde(flatten)]
    pub daemon: Option<Daemon>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// With `[compose]`: the web service's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub since: String,
}

/// The slots of a config, and where their files are.
pub struct Slots<'a> {
    pub serve: &'a Serve,
    layout: &'a Layout,
}

impl<'a> Slots<'a> {
    pub fn new(serve: &'a Serve, layout: &'a Layout) -> Slots<'a> {
        Slots { serve, layout }
    }

    pub fn all(&self) -> [Slot; 2] {
        [0, 1].map(|n| Slot {
            name: SLOT_NAMES[n],
            addr: self.serve.slots[n].clone(),
        })
    }

    pub fn named(&self, name: &str) -> Option<Slot> {
        self.all().into_iter().find(|slot| slot.name == name)
    }

    /// The other slot.
    pub fn other(&self, slot: &Slot) -> Slot {
        let [a, b] = self.all();
        if slot.name == a.name {
            b
        } else {
            a
        }
    }

    fn dir(&self) -> PathBuf {
        self.layout.state().join("slots")
    }

    fn file(&self, name: &str, ext: &str) -> PathBuf {
        self.dir().join(format!("{name}.{ext}"))
    }

    /// The slot the proxy was last told to use.
    pub fn live(&self) -> Option<Slot> {
        let text = std::fs::read_to_string(self.dir().join("live")).ok()?;
        self.named(text.trim())
    }

    /// Notes, before the proxy is told, which slot it will use.
    pub fn set_live(&self, slot: &Slot) -> Result<()> {
        self.create_dir()?;
        write_atomically(
            &self.dir().join("live"),
            format!("{}\n", slot.name).as_bytes(),
            0o600,
        )
    }

    /// Forgets which slot is live (nothing was, before the handover that did not happen).
    pub fn clear_live(&self) -> Result<()> {
        let file = self.dir().join("live");
        match std::fs::remove_file(&file) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("failed to remove `{}`", file.display()))
            }
            _ => Ok(()),
        }
    }

    /// The slot new traffic is not going to: where a release starts.
    pub fn idle(&self) -> Slot {
        match self.live() {
            Some(live) => self.other(&live),
            None => self.all()[0].clone(),
        }
    }

    fn create_dir(&self) -> Result<()> {
        std::fs::create_dir_all(self.dir())
            .with_context(|| format!("failed to create `{}`", self.dir().display()))
    }

    /// What `slot` runs, as last recorded.
    pub fn running(&self, slot: &Slot) -> Option<Running> {
        let text = std::fs::read_to_string(self.file(slot.name, "json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn unit(&self, slot: &Slot) -> Option<String> {
        let template = self.serve.unit.as_deref()?;
        let prefix = template.strip_suffix("@.service")?;
        Some(format!("{prefix}@{}.service", slot.name))
    }

    fn systemctl(&self, args: &[&str]) -> Cmd {
        Cmd::systemctl(self.serve.sudo, args.iter().copied())
    }

    /// The variables a slot's server gets, beside the release's own.
    pub fn variables(slot: &Slot) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        vars.insert("ATS_SLOT".to_string(), slot.name.to_string());
        vars.insert("ATS_SLOT_ADDR".to_string(), slot.addr.to_string());
        match &slot.addr {
            Address::Tcp { host, port } => {
                vars.insert("ATS_SLOT_HOST".to_string(), host.clone());
                vars.insert("ATS_SLOT_PORT".to_string(), port.to_string());
            }
            Address::Unix(path) => {
                vars.insert("ATS_SLOT_SOCKET".to_string(), path.display().to_string());
            }
        }
        vars
    }

    /// Starts `release` (its folder `dir`) on `slot`: whatever the slot still ran is stopped
    /// first. Returns once the server was started, not once it answers.
    pub fn start(
        &self,
        slot: &Slot,
        (release, commit): (&str, &str),
        dir: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.stop(slot)?;
        self.create_dir()?;
        let mut env = env.clone();
        env.extend(Slots::variables(slot));
        let mut running = Running {
            release: release.to_string(),
            commit: commit.to_string(),
            addr: slot.addr.to_string(),
            daemon: None,
            unit: self.unit(slot),
            container: None,
            since: output::rfc3339(std::time::SystemTime::now()),
        };
        if let Some(compose) = &self.serve.compose {
            let project = Project::new(compose, self.layout);
            running.container = Some(project.container(slot.name));
            self.record(slot, &running)?;
            let name = project.start_web((slot.name, &slot.addr), release, dir, &env)?;
            output::say(format!(
                "slot {}: started the container `{name}` for {release} on {}",
                slot.name, slot.addr
            ));
            return Ok(());
        }
        // Recorded before the start: a run killed just after it finds what it left.
        self.record(slot, &running)?;
        if let Some(unit) = self.unit(slot) {
            let mut file = String::new();
            for (key, value) in &env {
                if value.contains('\n') {
                    continue;
                }
                file.push_str(&format!("{key}={}\n", crate::sys::files::quote_env(value)));
            }
            write_atomically(&self.file(slot.name, "env"), file.as_bytes(), 0o600)?;
            let finished = self
                .systemctl(&["start", &unit])
                .timeout(self.serve.stop_timeout.0 + Duration::from_secs(30))
                .stream(&mut |line| tracing::info!("{unit} | {line}"))?;
            if !finished.exit.success() {
                bail!(
                    "`systemctl start {unit}` failed ({}){}",
                    finished.exit,
                    last_lines(&finished.tail)
                );
            }
            output::say(format!(
                "slot {}: started {unit} for {release} on {}",
                slot.name, slot.addr
            ));
            return Ok(());
        }
        let command = self
            .serve
            .start
            .as_deref()
            .context("`serve` has neither `unit` nor `start`")?;
        let command = expand(command, slot, dir);
        let daemon = Daemon::spawn(&command, dir, &env, &self.file(slot.name, "log"))
            .with_context(|| format!("failed to start slot {}", slot.name))?;
        let pid = daemon.pid;
        running.daemon = Some(daemon);
        self.record(slot, &running)?;
        output::say(format!(
            "slot {}: started {release} on {} (pid {pid})",
            slot.name, slot.addr
        ));
        Ok(())
    }

    fn record(&self, slot: &Slot, running: &Running) -> Result<()> {
        let text = serde_json::to_string_pretty(running).context("failed to encode a slot")?;
        write_atomically(&self.file(slot.name, "json"), text.as_bytes(), 0o600)
    }

    /// Whether the server of `slot` runs; `Err` says why not.
    pub fn alive(&self, slot: &Slot) -> Result<(), String> {
        let Some(running) = self.running(slot) else {
            return Err(format!("slot {} runs nothing", slot.name));
        };
        if let Some(container) = &running.container {
            return containers::container_alive(container);
        }
        if let Some(unit) = &running.unit {
            // Its control group, read from /proc: no bus, no privilege needed to ask.
            return if procs::of_unit(unit).is_empty() {
                Err(format!(
                    "{unit} runs no process (it exited or failed to start)"
                ))
            } else {
                Ok(())
            };
        }
        match running.daemon {
            Some(daemon) if daemon.runs() => Ok(()),
            Some(daemon) => Err(format!("its server (pid {}) exited", daemon.pid)),
            None => Err(format!("slot {} has no server", slot.name)),
        }
    }

    /// Stops the server of `slot`, whatever it runs: a graceful stop (TERM; systemd's stop for
    /// a unit), then after `stop_timeout` a KILL of its whole process group. Says what it did.
    pub fn stop(&self, slot: &Slot) -> Result<()> {
        let Some(running) = self.running(slot) else {
            return Ok(());
        };
        let clock = Instant::now();
        if let Some(container) = &running.container {
            if containers::stop_container(container, self.serve.stop_timeout.0)? {
                output::say(format!(
                    "slot {}: stopped the container `{container}` ({}) in {}",
                    slot.name,
                    running.release,
                    output::seconds(clock.elapsed())
                ));
            }
        } else if let Some(unit) = &running.unit {
            let finished = self
                .systemctl(&["stop", unit])
                .timeout(self.serve.stop_timeout.0 + Duration::from_secs(30))
                .uninterruptible()
                .stream(&mut |line| tracing::info!("{unit} | {line}"))?;
            if !finished.exit.success() {
                bail!(
                    "`systemctl stop {unit}` failed ({}){}",
                    finished.exit,
                    last_lines(&finished.tail)
                );
            }
            output::say(format!(
                "slot {}: stopped {unit} ({}) in {}",
                slot.name,
                running.release,
                output::seconds(clock.elapsed())
            ));
        } else if let Some(daemon) = running.daemon {
            if let Some(how) = daemon.stop(self.serve.stop_timeout.0) {
                output::say(format!(
                    "slot {}: stopped {} (pid {}) {how} in {}",
                    slot.name,
                    running.release,
                    daemon.pid,
                    output::seconds(clock.elapsed())
                ));
            }
        }
        let _ = std::fs::remove_file(self.file(slot.name, "json"));
        Ok(())
    }

    /// Waits until `slot` has no open connection (the proxy's requests in flight finished), for
    /// at most `drain`. Returns how many were still open at the end.
    pub fn drain(&self, slot: &Slot) -> usize {
        let clock = Instant::now();
        let count = || match &slot.addr {
            Address::Tcp { port, .. } => sockets::tcp_connections(*port),
            Address::Unix(path) => sockets::unix_connections(path),
        };
        // Quiet for a moment, not just once: a proxy worker may connect right after a check.
        let mut quiet = 0;
        loop {
            let open = count();
            quiet = if open == 0 { quiet + 1 } else { 0 };
            if quiet >= 3 {
                tracing::info!(
                    "slot {} drained in {}",
                    slot.name,
                    output::seconds(clock.elapsed())
                );
                return 0;
            }
            if clock.elapsed() >= self.serve.drain.0 {
                return open;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines the server of `slot` wrote, to show why it failed.
    pub fn last_output(&self, slot: &Slot, lines: usize) -> Vec<String> {
        if let Some(container) = self.running(slot).and_then(|r| r.container) {
            return containers::container_logs(&container, lines);
        }
        if let Some(unit) = self.unit(slot) {
            let n = lines.to_string();
            return Cmd::new("journalctl")
                .args(["-u", &unit, "-n", &n, "-q", "--no-pager", "-o", "cat"])
                .timeout(Duration::from_secs(10))
                .read()
                .map(|text| text.lines().map(String::from).collect())
                .unwrap_or_default();
        }
        daemon::tail(&self.file(slot.name, "log"), lines)
    }
}

/// A slot's command with `{addr}`, `{port}`, `{slot}` and `{release}` filled in.
pub fn expand(command: &str, slot: &Slot, release_dir: &Path) -> String {
    let port = slot.addr.port().map(|p| p.to_string()).unwrap_or_default();
    command
        .replace("{addr}", &slot.addr.to_string())
        .replace("{port}", &port)
        .replace("{slot}", slot.name)
        .replace("{release}", &shell_word(&release_dir.display().to_string()))
}

/// `text` as one shell word.
fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn last_lines(tail: &[String]) -> String {
    match tail.last() {
        Some(line) => format!(": {line}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_names_its_slot() {
        let slot = Slot {
            name: "b",
            addr: "127.0.0.1:8002".parse().unwrap(),
        };
        assert_eq!(
            expand(
                "gunicorn -b {addr} --name app-{slot}-{port} --chdir {release}",
                &slot,
                Path::new("/srv/my app/releases/1")
            ),
            "gunicorn -b 127.0.0.1:8002 --name app-b-8002 --chdir '/srv/my app/releases/1'"
        );
    }

    #[test]
    fn a_slots_file_keeps_its_pid_beside_the_rest() {
        let running = Running {
            release: "r1".into(),
            commit: "c1".into(),
            addr: "127.0.0.1:8001".into(),
            daemon: Some(Daemon {
                pid: 42,
                started: Some(7),
            }),
            unit: None,
            container: None,
            since: "now".into(),
        };
        let text = serde_json::to_string(&running).unwrap();
        assert!(
            text.contains("\"pid\":42") && text.contains("\"started\":7"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Running>(&text).unwrap(), running);
        let unit = Running {
            daemon: None,
            unit: Some("app@a.service".into()),
            ..running
        };
        let text = serde_json::to_string(&unit).unwrap();
        assert!(!text.contains("pid"), "{text}");
        assert_eq!(serde_json::from_str::<Running>(&text).unwrap(), unit);
    }

    #[test]
    fn env_file_values_read_back_as_written() {
        let values = [
            "/srv/app",
            "a b$HOME c",
            "it's \"quoted\" and $HOME and \\n",
            "",
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.env");
        let text: String = values
            .iter()
            .enumerate()
            .map(|(n, v)| format!("K{n}={}\n", crate::sys::files::quote_env(v)))
            .collect();
        std::fs::write(&file, text).unwrap();
        let read = crate::steps::read_env_file(&file).unwrap();
        let read: Vec<&str> = read.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(read, values);
    }
}
