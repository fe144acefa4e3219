//! The health check: does the release that just went live really serve, and serve this commit?
//!
//! Probes (an HTTP GET or a command) repeat until one passes or the deadline passes. An HTTP
//! probe can require a status and a text in the body; `{commit}` in that text stands for the
//! deployed commit, which is how ats-hook notices an app server still serving the old code after
//! a "successful" restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::Health;
use crate::output::{self, short};
use crate::process::{self, Cmd};

/// How much of a body is read and quoted.
const BODY_LIMIT: u64 = 64 * 1024;
const QUOTE: usize = 120;

/// Probes until healthy; the error says how many probes ran and what the last one answered,
/// and names the usual fix when the app still serves `previous_commit`.
pub fn check(
    health: &Health,
    commit: &str,
    previous_commit: Option<&str>,
    release_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    let expect_body = health.expect_body.as_ref().map(|text| {
        text.replace("{commit}", commit)
            .replace("{short_commit}", short(commit))
    });
    let started = Instant::now();
    let mut probes = 0;
    loop {
        probes += 1;
        let answer = match (&health.url, &health.command) {
            (Some(url), _) => probe_http(url, health, expect_body.as_deref()),
            (None, Some(command)) => probe_command(command, health, release_dir, env),
            (None, None) => unreachable!("the config requires a url or a command"),
        };
        match answer {
            Ok(answer) => {
                output::say(format!(
                    "health: ok after {probes} probe(s) in {}: {answer}",
                    output::seconds(started.elapsed())
                ));
                return Ok(());
            }
            Err(Failed { answer, body }) => {
                tracing::debug!(probes, "health probe failed: {answer}");
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
                        "health check failed after {probes} probe(s) in {}; last answer: {answer}{stale}",
                        output::seconds(started.elapsed())
                    );
                }
            }
        }
        std::thread::sleep(health.interval.0);
    }
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
fn probe_http(url: &str, health: &Health, expect_body: Option<&str>) -> Result<String, Failed> {
    // A new agent, so a new connection, for every probe: a kept-alive connection could still
    // reach a worker of the old code after a graceful reload.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(health.probe_timeout.0))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
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
