//! The processes that serve no HTTP (`[[serve.worker]]`): task workers and schedulers,
//! restarted from the new release once it serves the site.
//!
//! A worker is stopped gracefully: TERM, then its `stop_timeout` to finish the task it runs,
//! then KILL. An ordinary worker's successor starts first, so tasks never wait; a singleton
//! (a scheduler such as celery beat, which must never run twice) is stopped before its
//! successor starts. Each started one is kept in `<root>/.ats-hook/workers/<name>.json`, its
//! output in `<name>.log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::compose::{Project, Up};
use super::daemon::Daemon;
use crate::config::{Serve, Worker};
use crate::state::layout::Layout;
use crate::sys::files::write_atomically;
use crate::sys::output;
use crate::sys::process::Cmd;

/// What a worker runs, as its file records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Running {
    pub release: String,
    #[serde(flatten)]
    pub daemon: Daemon,
    pub since: String,
}

pub struct Workers<'a> {
    serve: &'a Serve,
    layout: &'a Layout,
}

impl<'a> Workers<'a> {
    pub fn new(serve: &'a Serve, layout: &'a Layout) -> Workers<'a> {
        Workers { serve, layout }
    }

    fn file(&self, worker: &Worker, ext: &str) -> PathBuf {
        self.layout
            .state()
            .join("workers")
            .join(format!("{}.{ext}", worker.name))
    }

    /// What `worker` runs (a started command), if it still runs.
    pub fn running(&self, worker: &Worker) -> Option<Running> {
        let text = std::fs::read_to_string(self.file(worker, "json")).ok()?;
        let running: Running = serde_json::from_str(&text).ok()?;
        running.daemon.runs().then_some(running)
    }

    /// Restarts every worker from `release` (folder `dir`). Each that fails is said, and the
    /// others still restart: the site is live by now.
    pub fn restart_all(&self, release: &str, dir: &Path, env: &BTreeMap<String, String>) -> bool {
        let mut all_ok = self.compose_up(release, dir, env, Up::Update);
        for worker in &self.serve.workers {
            let clock = Instant::now();
            match self.restart(worker, release, dir, env) {
                Ok(how) => output::say(format!(
                    "worker {}: {how} in {}",
                    worker.name,
                    output::seconds(clock.elapsed())
                )),
                Err(err) => {
                    all_ok = false;
                    output::warn(format!("worker {}: {err:#}", worker.name));
                }
            }
        }
        all_ok
    }

    /// With `[compose]`: the services other than the web one are brought to `release` (`up
    /// --wait`: what changed is recreated, what the release dropped is removed).
    fn compose_up(
        &self,
        release: &str,
        dir: &Path,
        env: &BTreeMap<String, String>,
        how: Up,
    ) -> bool {
        let Some(compose) = &self.serve.compose else {
            return true;
        };
        let clock = Instant::now();
        let project = Project::new(compose, self.layout);
        let done = project
            .other_services(dir, env)
            .and_then(|others| match others.is_empty() {
                true => Ok(others),
                false => project.up(env, &others, how).map(|()| others),
            });
        match done {
            Ok(others) if others.is_empty() => true,
            Ok(others) => {
                output::say(format!(
                    "compose: {} on {release} in {}",
                    others.join(", "),
                    output::seconds(clock.elapsed())
                ));
                true
            }
            Err(err) => {
                output::warn(format!("compose: the other services: {err:#}"));
                false
            }
        }
    }

    /// Starts, from `release`, each worker with a command that does not run (after a boot);
    /// those that run are left alone, and units start at boot by themselves.
    pub fn start_missing(&self, release: &str, dir: &Path, env: &BTreeMap<String, String>) {
        self.compose_up(release, dir, env, Up::Missing);
        for worker in &self.serve.workers {
            if worker.start.is_none() {
                continue;
            }
            if let Some(running) = self.running(worker) {
                output::say(format!(
                    "worker {}: runs {} already (pid {})",
                    worker.name, running.release, running.daemon.pid
                ));
                continue;
            }
            match self.restart(worker, release, dir, env) {
                Ok(how) => output::say(format!("worker {}: {how}", worker.name)),
                Err(err) => output::warn(format!("worker {}: {err:#}", worker.name)),
            }
        }
    }

    fn stop_timeout(&self, worker: &Worker) -> Duration {
        worker.stop_timeout.unwrap_or(self.serve.stop_timeout).0
    }

    fn restart(
        &self,
        worker: &Worker,
        release: &str,
        dir: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<String> {
        if let Some(unit) = &worker.unit {
            let finished = Cmd::systemctl(self.serve.sudo, ["restart", unit.as_str()])
                .timeout(self.stop_timeout(worker) + Duration::from_secs(30))
                .stream(&mut |line| tracing::info!("{unit} | {line}"))?;
            if !finished.exit.success() {
                bail!("`systemctl restart {unit}` failed ({})", finished.exit);
            }
            return Ok(format!("restarted {unit}"));
        }
        let command = worker
            .start
            .as_deref()
            .context("a worker with neither `start` nor `unit`")?;
        let old = self.running(worker);
        let mut said = Vec::new();
        if worker.singleton {
            if let Some(old) = &old {
                said.push(self.stop(old, worker));
            }
        }
        let dirs = self.file(worker, "json");
        if let Some(parent) = dirs.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create `{}`", parent.display()))?;
        }
        let daemon = Daemon::spawn(command, dir, env, &self.file(worker, "log"))?;
        let running = Running {
            release: release.to_string(),
            daemon,
            since: output::rfc3339(std::time::SystemTime::now()),
        };
        let text = serde_json::to_string_pretty(&running).context("failed to encode a worker")?;
        write_atomically(&self.file(worker, "json"), text.as_bytes(), 0o600)?;
        said.push(format!("started {release} (pid {})", daemon.pid));
        if !worker.singleton {
            if let Some(old) = &old {
                said.push(self.stop(old, worker));
            }
        }
        Ok(said.join(", "))
    }

    fn stop(&self, old: &Running, worker: &Worker) -> String {
        let how = old
            .daemon
            .stop(self.stop_timeout(worker))
            .unwrap_or("already gone");
        format!("stopped {} (pid {}) {how}", old.release, old.daemon.pid)
    }
}
