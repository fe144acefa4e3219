//! `ats-hook jobs [--json]`: the live release's scheduled jobs, when each runs next, how its
//! last run went; `ats-hook jobs log NAME`: a run's output.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::config::{Config, Schedule};
use crate::live::jobs::history::{self, RunRecord};
use crate::live::jobs::{self, run::Running, Installed};
use crate::state::layout::Layout;
use crate::sys::output::seconds;

#[derive(Debug, Serialize)]
struct JobStatus {
    name: String,
    schedule: String,
    next_run: Option<String>,
    overlap: &'static str,
    timeout_secs: u64,
    random_delay_secs: Option<u64>,
    /// Whether the installer runs it (a failed install leaves it out).
    installed: bool,
    /// The systemd unit, under systemd.
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    last_run: Option<RunRecord>,
    /// How many of its last runs in a row failed.
    failing: usize,
    running: Option<Running>,
}

#[derive(Debug, Serialize)]
struct JobsReport {
    installer: String,
    release: Option<String>,
    jobs: Vec<JobStatus>,
    /// Installed, but not declared by the live release (removed at the next install).
    stale: Vec<String>,
}

fn report(config: &Config) -> Result<JobsReport> {
    let layout = Layout::new(&config.deploy.root);
    let installed = Installed::read(&layout)?;
    let live = layout.live_release()?;
    let schedule = match &live {
        Some(id) => jobs::schedule_of(config, &layout.release(id))
            .with_context(|| format!("the live release {id}'s schedule"))?,
        None => Schedule::default(),
    };
    let runs = history::read_all(&layout)?;
    let list = schedule
        .jobs
        .iter()
        .map(|job| {
            let name = job.name.as_str();
            let (last, failing) = history::last_of(&runs, name);
            let unit = installed.jobs.iter().find(|j| j.name == name);
            JobStatus {
                name: name.to_string(),
                schedule: job.schedule.to_string(),
                next_run: job
                    .schedule
                    .next_run()
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%S %Z").to_string()),
                overlap: job.overlap.as_str(),
                timeout_secs: job.timeout.0.as_secs(),
                random_delay_secs: job.random_delay.map(|d| d.0.as_secs()),
                installed: unit.is_some_and(|u| u.schedule == job.schedule.text()),
                unit: unit.filter(|u| !u.unit.is_empty()).map(|u| u.unit.clone()),
                last_run: last.cloned(),
                failing,
                running: jobs::run::running(&layout, name),
            }
        })
        .collect();
    let stale = installed
        .jobs
        .iter()
        .filter(|j| schedule.job(&j.name).is_none())
        .map(|j| j.name.clone())
        .collect();
    Ok(JobsReport {
        installer: installed.installer,
        release: live,
        jobs: list,
        stale,
    })
}

pub fn list(config: &Config, json: bool, out: &mut dyn Write) -> Result<ExitCode> {
    let report = report(config)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &report).context("failed to write JSON")?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if report.jobs.is_empty() && report.stale.is_empty() {
        let file = &config.jobs.file;
        writeln!(
            out,
            "no scheduled jobs: the live release has no `[[job]]` in `{file}`"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = report.jobs.iter().map(|j| j.name.len()).max().unwrap_or(4);
    let installer = if report.installer.is_empty() {
        "nothing yet"
    } else {
        &report.installer
    };
    writeln!(
        out,
        "jobs of {} (installed with {installer}):",
        report.release.as_deref().unwrap_or("no live release")
    )?;
    for job in &report.jobs {
        let next = job.next_run.as_deref().unwrap_or("never");
        let delay = job
            .random_delay_secs
            .map(|s| format!(" + up to {s}s"))
            .unwrap_or_default();
        let last = match &job.last_run {
            Some(run) => format!(
                "last {} at {} ({})",
                run.outcome.as_str(),
                run.started_at,
                seconds(std::time::Duration::from_millis(run.duration_ms))
            ),
            None => "never ran".into(),
        };
        writeln!(
            out,
            "  {:<width$}  {:<16}  next {next}{delay}  {last}",
            job.name, job.schedule
        )?;
        if let Some(running) = &job.running {
            writeln!(
                out,
                "  {:<width$}  running since {} (pid {}, release {})",
                "", running.since, running.pid, running.release
            )?;
        }
        if job.failing > 1 {
            writeln!(
                out,
                "  {:<width$}  its last {} runs failed: `ats-hook jobs log {}`",
                "", job.failing, job.name
            )?;
        }
        if !job.installed {
            writeln!(
                out,
                "  {:<width$}  not installed as declared: the last install failed (see the last deploy's log)",
                ""
            )?;
        }
    }
    for name in &report.stale {
        writeln!(
            out,
            "  {name}: installed, but the live release does not declare it (its runs do nothing)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn log(
    config: &Config,
    name: &str,
    run: Option<&str>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    crate::config::JobName::new(name)?;
    let layout = Layout::new(&config.deploy.root);
    let runs = history::read_all(&layout)?;
    let record = match run {
        Some(id) => runs.iter().rev().find(|r| r.job == name && r.run == id),
        None => history::last_of(&runs, name).0,
    };
    let Some(record) = record else {
        match run {
            Some(id) => bail!("no run `{id}` of job `{name}` (see `ats-hook jobs --json`)"),
            None => bail!("job `{name}` has not run yet"),
        }
    };
    let path = history::log_file(&layout, name, &record.run);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "the log of run {} is gone (ats-hook keeps the last {} of each job)",
            record.run,
            history::KEEP_LOGS
        )
    })?;
    writeln!(
        out,
        "# job {name}, run {} in {}: {} ({})",
        record.run,
        record.release.as_deref().unwrap_or("?"),
        record.outcome.as_str(),
        record.note.as_deref().map_or_else(
            || format!("exit {}", record.exit_code.unwrap_or(-1)),
            str::to_string
        )
    )?;
    out.write_all(&text)?;
    Ok(ExitCode::SUCCESS)
}
