//! The runs of scheduled jobs: one JSON line per run in `.ats-hook/jobs/runs.jsonl` (appended
//! as the deploy history is), and each run's output in `.ats-hook/jobs/logs/<job>/<run>.log`,
//! of which the last `KEEP_LOGS` of each job are kept.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::state::layout::Layout;

/// How many run logs of each job are kept.
pub const KEEP_LOGS: usize = 20;
/// The history is cut back to this many runs when it grows past twice as many.
const KEEP_RUNS: usize = 5000;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    /// Stopped by a signal to `run-job` (a replacing run, `systemctl stop`, a shutdown).
    Interrupted,
    /// Not run: the last run still ran (`overlap = "skip"`), or one already waited (`wait`).
    Skipped,
    /// Not run: the live release does not declare the job (a timer a failure left behind).
    NotDeclared,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed-out",
            Outcome::Interrupted => "interrupted",
            Outcome::Skipped => "skipped",
            Outcome::NotDeclared => "not-declared",
        }
    }

    /// A run that should have done its work and did not.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::TimedOut)
    }
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub job: String,
    pub run: String,
    pub outcome: Outcome,
    /// The release it ran in (none when it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// The exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it did not run, or how it ended when that is not an exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who started it: `timer`, `cron`, or the user who ran `run-job` by hand.
    pub by: String,
}

pub fn runs_file(layout: &Layout) -> PathBuf {
    layout.jobs_dir().join("runs.jsonl")
}

pub fn log_dir(layout: &Layout, job: &str) -> PathBuf {
    layout.jobs_dir().join("logs").join(job)
}

pub fn log_file(layout: &Layout, job: &str, run: &str) -> PathBuf {
    log_dir(layout, job).join(format!("{run}.log"))
}

pub fn append(layout: &Layout, record: &RunRecord) -> Result<()> {
    crate::state::record::append(&runs_file(layout), record)
}

/// Every run recorded, oldest first; a torn or foreign line is passed over.
pub fn read_all(layout: &Layout) -> Result<Vec<RunRecord>> {
    let path = runs_file(layout);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(err).with_context(|| format!("failed to read `{}`", path.display()))
        }
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The last run of `job` that ran (skips aside), and how many of its last runs in a row failed.
pub fn last_of<'a>(records: &'a [RunRecord], job: &str) -> (Option<&'a RunRecord>, usize) {
    let mut ran = records
        .iter()
        .rev()
        .filter(|r| r.job == job && !matches!(r.outcome, Outcome::Skipped | Outcome::NotDeclared));
    let last = ran.clone().next();
    let failing = ran.by_ref().take_while(|r| r.outcome.is_failure()).count();
    (last, failing)
}

/// Keeps the last `KEEP_LOGS` logs of `job`, and the history within bounds.
pub fn tidy(layout: &Layout, job: &str) -> Result<()> {
    let dir = log_dir(layout, job);
    let mut logs: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(()),
    };
    // Run ids begin with their UTC time: their order is the runs' order.
    logs.sort();
    let extra = logs.len().saturating_sub(KEEP_LOGS);
    for old in &logs[..extra] {
        std::fs::remove_file(old)
            .with_context(|| format!("failed to remove old job log `{}`", old.display()))?;
    }
    let records = read_all(layout)?;
    if records.len() > 2 * KEEP_RUNS {
        let mut text = String::new();
        for record in &records[records.len() - KEEP_RUNS..] {
            text.push_str(&serde_json::to_string(record).context("failed to encode a run")?);
            text.push('\n');
        }
        crate::sys::files::write_atomically(&runs_file(layout), text.as_bytes(), 0o600)?;
    }
    Ok(())
}
