//! The health check: does the release that just went live really serve, and serve this commit?
//!
//! Probes (an HTTP GET or a command) repeat until one passes or the deadline passes. An HTTP
//! probe can require a status and a text in the body; `{commit}` in that text stands for the
//! deployed commit, which is how ats-hook notices an app server still serving the old code after
//! a "successful" restart.
//!
//! An answer right after a restart may come from the old code: a graceful reload lets the old
//! workers finish, and they still accept connections for a moment. So before probing, ats-hook
//! waits (up to `settle`) for the processes that ran in the previous release to exit or move,
//! and a release is healthy only when `passes` probes in a row pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::Health;
use crate::sys::output::{self, short};
use crate::sys::process::{self, Cmd};
use crate::sys::procs::{self, Scan, User};

/// The processes that ran in the release that was live, seen just before the restart.
pub struct OldProcesses {
    dir: PathBuf,
    users: Vec<User>,
}

impl OldProcesses {
    /// Notes who uses `previous` (the release that was live) now, before the restart.
    pub fn before_restart(previous: &Path) -> OldProcesses {
        let scan = Scan::under(previous);
        OldProcesses {
            dir: previous.to_path_buf(),
            users: scan.users_of(previous).into_iter().cloned().collect(),
        }
    }

    /// Waits until none of them uses the previous release any more, for at most `settle`, and
    /// names those left.
    fn settle(&self, settle: Duration, deploy_root: &Path) {
        if self.users.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut left = self.users.clone();
        loop {
            let scan = Scan::under(&self.dir);
            left.retain(|user| scan.pid_uses(user.pid, &self.dir));
            if left.is_empty() {
                tracing::debug!(
                    "the old release's processes left in {}",
                    output::seconds(started.elapsed())
                );
                return;
            }
            if started.elapsed() >= settle || process::stop_requested() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let named: Vec<String> = left.iter().take(3).map(|u| u.to_string()).collect();
        output::warn(format!(
            "{} still in the previous release {} after {}: they may still serve the old code. \
             A server started inside a release keeps it; start it from the deploy root with \
             `--chdir {}/current` (gunicorn) or `chdir = {}/current` (uWSGI)",
            named.join(", "),
            self.dir.file_name().unwrap_or_default().to_string_lossy(),
            output::seconds(started.elapsed()),
            deploy_root.display(),
            deploy_root.display(),
        ));
    }
}

/// How much of a body is read and quoted.
const BODY_LIMIT: u64 = 64 * 1024;
const QUOTE: usize = 120;

/// What is probed: the live app as `[health]` says (the restart model), or in the handover a
/// slot's own server (its URL, and whether it still runs) or the proxy's public address.
#[derive(Default)]
pub struct Target<'a> {
    /// The URL to probe instead of `health.url`.
    pub url: Option<String>,
    /// Asked before each probe; an `Err` (the server exited) fails the check at once.
    pub alive: Option<&'a dyn Fn() -> Result<(), String>>,
    /// How the output names the check (`health`, `health of slot b`, `proxy`).
    pub label: Option<String>,
}

/// Probes until healthy; the error says how many probes ran and what the last one answered,
/// and names the usual fix when the app still serves `previous_commit`.
#[allow(clippy::too_many_arguments)]
pub fn check(
    health: &Health,
    target: &Target<'_>,
    commit: &str,
    previous_commit: Option<&str>,
    release_dir: &Path,
    env: &BTreeMap<String, String>,
    old: Option<&OldProcesses>,
    deploy_root: &Path,
) -> Result<()> {
    let label = target.label.as_deref().unwrap_or("health");
    let url = target.url.as_ref().or(health.url.as_ref());
    if let Some(old) = old {
        old.settle(health.settle.0, deploy_root);
    }
    let expect_body = health.expect_body.as_ref().map(|text| {
        text.replace("{commit}", commit)
            .replace("{short_commit}", short(commit))
    });
    let ca_file = health.ca_file.as_ref().map(|file| deploy_root.join(file));
    let tls = crate::sys::http::Tls {
        ca_file: ca_file.as_deref(),
        insecure: health.insecure,
    };
    if health.insecure && target.url.is_none() {
        output::say(
            "health: the TLS certificate is not checked (`health.insecure`, loopback only)",
        );
    }
    let started = Instant::now();
    let mut probes = 0;
    let mut passed = 0;
    let mut last: Option<String> = None;
    loop {
        if let Some(Err(why)) = target.alive.map(|alive| alive()) {
            let last = last
                .map(|answer| format!("; last answer: {answer}"))
                .unwrap_or_default();
            bail!(
                "{label} failed after {probes} probe(s) in {}: {why}{last}",
                output::seconds(started.elapsed())
            );
        }
        probes += 1;
        let command = if target.url.is_some() {
            None
        } else {
            health.command.as_ref()
        };
        let answer = match (url, command) {
            (Some(url), _) => probe_http(url, health, tls, expect_body.as_deref()),
            (None, Some(command)) => probe_command(command, health, release_dir, env),
            (None, None) => Ok(String::new()),
        };
        // And the processes, when named: all of them in the new release.
        let answer = match answer {
            Ok(said) if !health.processes.is_empty() => {
                let probed = match env.get("COMPOSE_PROJECT_NAME") {
                    // A Compose app's processes are its services' containers.
                    Some(project) => super::containers::probe_services(
                        project,
                        &health.processes,
                        env.get("ATS_RELEASE_ID")
                            .map(String::as_str)
                            .unwrap_or_default(),
                    )
                    .map_err(Failed::from),
                    None => probe_processes(&health.processes, release_dir, deploy_root),
                };
                probed.map(|procs| {
                    if said.is_empty() {
                        procs
                    } else {
                        format!("{said}; {procs}")
                    }
                })
            }
            other => other,
        };
        match answer {
            Ok(answer) => {
                passed += 1;
                if passed >= health.passes {
                    let row = if health.passes > 1 {
                        format!(" ({passed} in a row)")
                    } else {
                        String::new()
                    };
                    output::say(format!(
                        "{label}: ok after {probes} probe(s) in {}{row}: {answer}",
                        output::seconds(started.elapsed())
                    ));
                    return Ok(());
                }
                tracing::debug!(probes, "{label} probe passed ({passed} in a row): {answer}");
                if started.elapsed() + health.interval.0 >= health.timeout.0
                    || process::stop_requested()
                {
                    bail!(
                        "{label} check failed: {passed} probe(s) in a row passed within {}, {} needed; last answer: {answer}",
                        output::seconds(started.elapsed()),
                        health.passes
                    );
                }
            }
            Err(Failed { answer, body }) => {
                passed = 0;
                tracing::debug!(probes, "{label} probe failed: {answer}");
                last = Some(answer.clone());
                if started.elapsed() + health.interval.0 >= health.timeout.0
                    || process::stop_requested()
                {
                    let stale = match (previous_commit, body) {
                        (Some(previous), Some(body)) if body.contains(previous) => format!(
                            ". The app still serves the previous commit {}: its server kept the old \
                             release. A reload can do that (gunicorn started in `current` resolves \
                             the symlink once): restart it instead (`systemctl_action = \"restart\"`), \
                             or start it with `--chdir` pointing at `current` so a reload follows the switch",
                            short(previous)
                        ),
                        _ => String::new(),
                    };
                    bail!(
                        "{label} check failed after {probes} probe(s) in {}; last answer: {answer}{stale}",
                        output::seconds(started.elapsed())
                    );
                }
            }
        }
        std::thread::sleep(health.interval.0);
    }
}

/// Whether every process of `names` (systemd units, or pidfiles relative to `deploy_root`)
/// works in the release `current` points at: not in an older one it resolved when it started.
fn probe_processes(names: &[String], current: &Path, deploy_root: &Path) -> Result<String, Failed> {
    let release = std::fs::canonicalize(current)
        .map_err(|err| Failed::from(format!("cannot resolve `{}`: {err}", current.display())))?;
    let id = release
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let releases = release.parent().unwrap_or(deploy_root).to_path_buf();
    let mut counts = Vec::new();
    for name in names {
        let procs = if is_unit(name) {
            procs::of_unit(name)
        } else {
            let pidfile = deploy_root.join(name);
            let pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
                .ok_or_else(|| Failed::from(format!("`{}` names no process", pidfile.display())))?;
            procs::with_children(pid)
        };
        if procs.is_empty() {
            return Err(Failed::from(format!("`{name}` has no running process")));
        }
        for proc in &procs {
            let Some(cwd) = &proc.cwd else {
                return Err(Failed::from(format!(
                    "cannot read the working directory of {proc} of `{name}`: run the app as the deploy user, or ats-hook as root"
                )));
            };
            if cwd.starts_with(&release) {
                // Its executable and the paths it was given, where they are releases' files,
                // must be the new release's too (resolved: `current/...` names the new one).
                let stale = proc.exe.iter().chain(&proc.paths).find_map(|path| {
                    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                    let other = real.strip_prefix(&releases).ok()?.components().next()?;
                    (other.as_os_str() != id.as_str()).then(|| {
                        (
                            path.clone(),
                            other.as_os_str().to_string_lossy().into_owned(),
                        )
                    })
                });
                if let Some((path, other)) = stale {
                    return Err(Failed::from(format!(
                        "{proc} of `{name}` works in {id} but runs `{}` of release {other}: restart it so it starts from the new release",
                        path.display()
                    )));
                }
                continue;
            }
            let fix = if is_unit(name) {
                format!("restart it (`systemctl_action = \"restart\"`), or start it with `--chdir {}/current` (gunicorn) so a reload follows the switch", deploy_root.display())
            } else {
                format!("restart it, or start it with `--chdir {}/current` (gunicorn) so a reload follows the switch", deploy_root.display())
            };
            let message = match cwd.strip_prefix(&releases) {
                Ok(rest) => format!(
                    "{proc} of `{name}` runs in release {} (its working directory), not in {id}: a reload keeps the directory a server resolved when it started; {fix}",
                    rest.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default()
                ),
                Err(_) => format!(
                    "{proc} of `{name}` works in `{}`, outside the new release {id}: give it `WorkingDirectory={}/current` and {fix}",
                    cwd.display(),
                    deploy_root.display()
                ),
            };
            return Err(Failed::from(message));
        }
        counts.push(format!(
            "{} of `{name}`",
            output::count(procs.len(), "process")
        ));
    }
    Ok(format!("{} in {id}", counts.join(", ")))
}

/// Whether a `processes` entry names a systemd unit rather than a pidfile.
fn is_unit(name: &str) -> bool {
    !name.contains('/')
        && [".service", ".scope", ".socket", ".target"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

/// A probe that did not pass: what it answered, and the body if there was one.
struct Failed {
    answer: String,
    body: Option<String>,
}

impl From<String> for Failed {
    fn from(answer: String) -> Failed {
        Failed { answer, body: None }
    }
}

/// One GET. `Ok` holds a short description of a passing answer.
fn probe_http(
    url: &str,
    health: &Health,
    tls: crate::sys::http::Tls<'_>,
    expect_body: Option<&str>,
) -> Result<String, Failed> {
    // A new agent, so a new connection, for every probe: a kept-alive connection could still
    // reach a worker of the old code after a graceful reload.
    let agent = crate::sys::http::agent(health.probe_timeout.0, tls)
        .map_err(|err| Failed::from(format!("{err:#}")))?;
    let mut response = agent
        .get(url)
        .call()
        .map_err(|err| Failed::from(describe_error(&err, health.probe_timeout.0)))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_string()
        .map_err(|err| Failed::from(format!("HTTP {status}, body unreadable: {err}")))?;
    let quoted = quote(&body);
    if status != health.expect_status {
        let answer = format!(
            "HTTP {status} (expected {}): {quoted}",
            health.expect_status
        );
        return Err(Failed {
            answer,
            body: Some(body),
        });
    }
    if let Some(expected) = expect_body {
        if !body.contains(expected) {
            let answer = format!("HTTP {status} without `{expected}` in the body: {quoted}");
            return Err(Failed {
                answer,
                body: Some(body),
            });
        }
    }
    Ok(format!("HTTP {status}"))
}

fn describe_error(err: &ureq::Error, limit: Duration) -> String {
    match err {
        ureq::Error::Timeout(_) => {
            format!("no answer within {}", humantime::format_duration(limit))
        }
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_string()
        }
        other => other.to_string(),
    }
}

fn probe_command(
    command: &str,
    health: &Health,
    release_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<String, Failed> {
    let finished = Cmd::shell(command)
        .dir(release_dir)
        .envs(env)
        .timeout(health.probe_timeout.0)
        .stream(&mut |line| tracing::debug!("health | {line}"))
        .map_err(|err| Failed::from(format!("{err:#}")))?;
    let last = finished
        .tail
        .last()
        .map(|line| format!(": {}", quote(line)))
        .unwrap_or_default();
    if finished.exit.success() {
        Ok(format!("`{command}` passed{last}"))
    } else {
        Err(Failed::from(format!(
            "`{command}` failed ({}){last}",
            finished.exit
        )))
    }
}

/// The start of a body, on one line, for a message.
fn quote(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "(empty body)".to_string();
    }
    match flat.char_indices().nth(QUOTE) {
        Some((cut, _)) => format!("{:?}…", &flat[..cut]),
        None => format!("{flat:?}"),
    }
}
