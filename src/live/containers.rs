//! The containers of a Compose app, one by one: whether the slot's container runs and is
//! healthy, stopping and removing it, its last lines, and the services `health.processes`
//! names. Asked of Docker by name or label, never through /proc (a container's processes live
//! in namespaces of their own).

use std::time::Duration;

use anyhow::{Context, Result};

use crate::sys::output;
use crate::sys::process::Cmd;

/// `health.processes` of a Compose app: each named service has a running container, healthy
/// when its image has a HEALTHCHECK, and a service the release builds runs `release`'s image
/// (its label). For the restart model: with `[serve]`, the slot's container is watched itself.
pub fn probe_services(project: &str, services: &[String], release: &str) -> Result<String, String> {
    let mut said = Vec::new();
    for service in services {
        let text = Cmd::new("docker")
            .args([
                "ps",
                "--all",
                "--filter",
                &format!("label=com.docker.compose.project={project}"),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
                "--format",
                "{{.Names}}\t{{.State}}\t{{.Status}}\t{{.Label \"ats-hook.release\"}}",
            ])
            .timeout(Duration::from_secs(20))
            .read()
            .map_err(|err| format!("cannot ask Docker about `{service}`: {err:#}"))?;
        let mut running = 0;
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, state, status, label] = fields[..] else {
                continue;
            };
            if state != "running" {
                // An old one-off or an exited slot container says nothing of the new release.
                continue;
            }
            if status.contains("(unhealthy)") || status.contains("(health: starting)") {
                return Err(format!("the container `{name}` of `{service}` is {status}"));
            }
            if !label.is_empty() && label != release {
                return Err(format!(
                    "the container `{name}` of `{service}` runs release {label}, not {release}"
                ));
            }
            running += 1;
        }
        if running == 0 {
            return Err(format!("the service `{service}` has no running container"));
        }
        said.push(format!(
            "{} of `{service}`",
            output::count(running, "container")
        ));
    }
    Ok(format!("{} on {release}", said.join(", ")))
}

/// Whether a container runs (and is not unhealthy); `Err` says what it is instead.
pub fn container_alive(name: &str) -> Result<(), String> {
    let state = Cmd::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            name,
        ])
        .timeout(Duration::from_secs(20))
        .read()
        .map_err(|_| format!("its container `{name}` is gone"))?;
    let mut words = state.split_whitespace();
    let status = words.next().unwrap_or_default();
    let health = words.next().unwrap_or_default();
    match (status, health) {
        ("running", "unhealthy") => Err(format!("its container `{name}` is unhealthy")),
        ("running", _) => Ok(()),
        (status, _) => Err(format!("its container `{name}` is {status}")),
    }
}

/// Stops a container (TERM, then KILL after `timeout`) and removes it.
pub fn stop_container(name: &str, timeout: Duration) -> Result<bool> {
    if !exists(name) {
        return Ok(false);
    }
    let secs = timeout.as_secs().to_string();
    Cmd::new("docker")
        .args(["stop", "--time", &secs, name])
        .timeout(timeout + Duration::from_secs(30))
        .uninterruptible()
        .read()
        .with_context(|| format!("failed to stop the container `{name}`"))?;
    remove_container(name)?;
    Ok(true)
}

fn exists(name: &str) -> bool {
    Cmd::new("docker")
        .args(["inspect", "--format", "{{.Id}}", name])
        .timeout(Duration::from_secs(20))
        .read()
        .is_ok()
}

pub(super) fn remove_container(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    Cmd::new("docker")
        .args(["rm", "--force", name])
        .timeout(Duration::from_secs(60))
        .uninterruptible()
        .read()
        .with_context(|| format!("failed to remove the container `{name}`"))?;
    Ok(())
}

/// The last lines a container wrote.
pub fn container_logs(name: &str, lines: usize) -> Vec<String> {
    let n = lines.to_string();
    let mut out = Vec::new();
    let _ = Cmd::new("docker")
        .args(["logs", "--tail", &n, name])
        .timeout(Duration::from_secs(20))
        .stream(&mut |line| out.push(line.to_string()));
    out
}
