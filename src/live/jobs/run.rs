//! One run of a scheduled job (`ats-hook run-job NAME`), what a timer or a crontab line starts.
//!
//! In order: the live release is found under the switch lock taken shared (a deploy holds it
//! while it goes live, so a run never starts in the middle of a switch, and a deploy waits at
//! most for that instant); the job's lock enforces its overlap policy; the job's command runs in
//! the release's folder with the steps' environment, in a process group of its own that its
//! timeout stops whole; its output goes to the run's log, up to `deploy.log_limit`; the run is
//! recorded; a failure is told to `[notify]`. The release is the one live when the run
//! started: a deploy during the run does not change its code, and pruning keeps the release
//! while the run lasts, as it keeps any release a process works in (`sys::procs::Scan`
//! reads /proc: the job runs from the release's folder).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use super::history::{self, Outcome, RunRecord};
use crate::config::{Config, Job, Overlap};
use crate::state::layout::Layout;
use crate::state::lock;
use crate::steps;
use crate::sys::output::{self, seconds};
use crate::sys::process::{self, Cmd, Exit};

/// How long a run waits for a deploy's switch to end.
const SWITCH_WAIT: Duration = Duration::from_secs(600);
/// How long a replacing run waits for the one it stops.
const REPLACE_WAIT: Duration = Duration::from_secs(30);

/// What asked for the run.
pub struct Request<'a> {
    pub name: &'a str,
    /// Sleep up to the job's `random_delay` first (cron has no delay of its own).
    pub random_delay: bool,
}

/// Who holds a job's lock: written in it while a run lasts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Running {
    pub pid: u32,
    pub run: String,
    pub release: String,
    pub since: String,
}

pub fn lock_file(layout: &Layout, job: &str) -> std::path::PathBuf {
    layout.jobs_dir().join(format!("{job}.lock"))
}

/// The run holding `job`'s lock, if one does.
pub fn running(layout: &Layout, job: &str) -> Option<Running> {
    let path = lock_file(layout, job);
    if !path.exists() {
        return None;
    }
    match lock::flock(&path, false, Duration::ZERO) {
        Ok(Some(_free)) => None,
        Ok(None) => std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(text.trim()).ok()),
        Err(_) => None,
    }
}

/// Runs the job; the exit status is the run's (0 for a skip).
pub fn run(config: &Config, request: &Request<'_>) -> Result<ExitCode> {
    process::install_signal_handlers()?;
    let layout = Layout::new(&config.deploy.root);
    let jobs_dir = layout.jobs_dir();
    std::fs::create_dir_all(&jobs_dir)
        .with_context(|| format!("failed to create `{}`", jobs_dir.display()))?;
    let by = who_started(request);
    let name = request.name;
    let mut record = RunRecord {
        job: name.to_string(),
        run: run_id(),
        outcome: Outcome::Skipped,
        release: None,
        commit: None,
        started_at: now(),
        finished_at: String::new(),
        duration_ms: 0,
        exit_code: None,
        note: None,
        by,
    };
    let Some((_, job)) = live_job(config, &layout, name)? else {
        return not_declared(&layout, record);
    };
    if request.random_delay {
        if let Some(delay) = job.random_delay {
            sleep_up_to(delay.0);
        }
    }
    let Some(_lock) = take_job_lock(&layout, &job, &mut record)? else {
        return finish(config, &layout, record, Duration::ZERO);
    };
    // Found again: a wait may have outlasted a deploy.
    let Some((release, job)) = live_job(config, &layout, name)? else {
        return not_declared(&layout, record);
    };
    record.started_at = now();
    record.release = Some(release.clone());
    write_running(&layout, name, &record, &release)?;

    let deploys = crate::state::record::read_all(&layout.deploys_file()).unwrap_or_default();
    let (commit, mut env) = steps::live_release_environment(config, &layout, &deploys, &release)?;
    record.commit = (!commit.is_empty()).then_some(commit);
    env.extend(job.env.clone());
    env.insert("ATS_JOB_NAME".into(), name.to_string());
    env.insert("ATS_JOB_RUN".into(), record.run.clone());

    let log_path = history::log_file(&layout, name, &record.run);
    let mut log = RunLog::create(&log_path, config.deploy.log_limit.0)?;
    let clock = Instant::now();
    let finished = Cmd::shell(&job.run)
        .dir(layout.release(&release))
        .envs(env)
        .timeout(job.timeout.0)
        .stream(&mut |line| log.line(line));
    log.finish();
    let mut finished = finished.with_context(|| format!("job `{name}` could not start"))?;
    // A stop (systemd's `restart` of a replacing run, a shutdown) signals the whole unit at
    // once: the job may die of it before ats-hook has passed it on.
    if process::stop_requested() && !finished.exit.success() {
        finished.exit = Exit::Interrupted;
    }
    (record.outcome, record.exit_code, record.note) = match finished.exit {
        Exit::Code(0) => (Outcome::Succeeded, Some(0), None),
        Exit::Code(code) => (Outcome::Failed, Some(code), None),
        Exit::TimedOut(limit) => (
            Outcome::TimedOut,
            None,
            Some(format!(
                "stopped at its timeout of {}",
                humantime::format_duration(limit)
            )),
        ),
        Exit::Interrupted => (
            Outcome::Interrupted,
            None,
            Some("stopped by a signal".into()),
        ),
        exit => (Outcome::Failed, exit.shell_code(), Some(exit.to_string())),
    };
    finish(config, &layout, record, clock.elapsed())
}

/// The job as the live release declares it, and the release, found under the switch lock.
fn live_job(config: &Config, layout: &Layout, name: &str) -> Result<Option<(String, Job)>> {
    let _between_switches = lock::flock(&layout.switch_lock(), false, SWITCH_WAIT)?;
    let Some(release) = layout.live_release()? else {
        return Ok(None);
    };
    let schedule = super::schedule_of(config, &layout.release(&release))?;
    Ok(schedule.job(name).cloned().map(|job| (release, job)))
}

fn not_declared(layout: &Layout, mut record: RunRecord) -> Result<ExitCode> {
    record.outcome = Outcome::NotDeclared;
    record.note = Some("the live release does not declare this job".into());
    record.finished_at = record.started_at.clone();
    output::warn(format!(
        "job `{}` is not in the live release's schedule: not run (the next deploy removes its timer)",
        record.job
    ));
    history::append(layout, &record)?;
    Ok(ExitCode::SUCCESS)
}

/// The job's lock, taken as its overlap policy says; `None` when this run does not happen
/// (`record` then says why).
fn take_job_lock(
    layout: &Layout,
    job: &Job,
    record: &mut RunRecord,
) -> Result<Option<Flock<File>>> {
    let path = lock_file(layout, job.name.as_str());
    if let Some(lock) = lock::flock(&path, true, Duration::ZERO)? {
        return Ok(Some(lock));
    }
    let holder = running(layout, job.name.as_str());
    let described = holder.as_ref().map_or_else(
        || "another run".to_string(),
        |h| format!("run {} (pid {}, since {})", h.run, h.pid, h.since),
    );
    match job.overlap {
        Overlap::Skip => {
            record.note = Some(format!("{described} still runs"));
            Ok(None)
        }
        Overlap::Wait => {
            let queue = layout.jobs_dir().join(format!("{}.queue", job.name));
            let Some(_waiting) = lock::flock(&queue, true, Duration::ZERO)? else {
                record.note = Some(format!("{described} still runs, and a run already waits"));
                return Ok(None);
            };
            lock::flock(&path, true, job.timeout.0)
        }
        Overlap::Replace => {
            if let Some(holder) = &holder {
                output::say(format!(
                    "job `{}`: stopping {described} to replace it",
                    job.name
                ));
                let pid = nix::unistd::Pid::from_raw(holder.pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                match lock::flock(&path, true, REPLACE_WAIT) {
                    Ok(lock) => return Ok(lock),
                    Err(_) => {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
            lock::flock(&path, true, REPLACE_WAIT)
        }
    }
}

fn write_running(layout: &Layout, name: &str, record: &RunRecord, release: &str) -> Result<()> {
    let running = Running {
        pid: std::process::id(),
        run: record.run.clone(),
        release: release.to_string(),
        since: record.started_at.clone(),
    };
    let path = lock_file(layout, name);
    let text = serde_json::to_string(&running).context("failed to encode the running job")?;
    // The lock is held on this file: it is written in place, never replaced.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open `{}`", path.display()))?;
    file.set_len(0)
        .and_then(|()| file.write_all(text.as_bytes()))
        .with_context(|| format!("failed to write `{}`", path.display()))
}

/// Records the run, tells `[notify]` of a failure, keeps the logs within bounds.
fn finish(
    config: &Config,
    layout: &Layout,
    mut record: RunRecord,
    took: Duration,
) -> Result<ExitCode> {
    record.finished_at = now();
    record.duration_ms = took.as_millis() as u64;
    history::append(layout, &record)?;
    let name = &record.job;
    let summary = match record.outcome {
        Outcome::Succeeded => format!("job {name} succeeded in {}", seconds(took)),
        Outcome::Skipped => format!(
            "job {name} skipped: {}",
            record.note.as_deref().unwrap_or_default()
        ),
        outcome => format!(
            "job {name} {} after {}{}; its output: `ats-hook jobs log {name}`",
            match outcome {
                Outcome::TimedOut => "TIMED OUT".to_string(),
                Outcome::Interrupted => "INTERRUPTED".to_string(),
                _ => format!(
                    "FAILED (exit {})",
                    record.exit_code.map_or("?".into(), |c| c.to_string())
                ),
            },
            seconds(took),
            record
                .note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
        ),
    };
    if record.outcome.is_failure() || record.outcome == Outcome::Interrupted {
        output::error(&summary);
    } else {
        tracing::debug!("{summary}");
    }
    if let Some(notify) = &config.notify {
        super::super::notify::send_job_failure(notify, layout.root(), &record, &summary);
    }
    if let Err(err) = history::tidy(layout, name) {
        output::warn(format!("{err:#}"));
    }
    Ok(match record.outcome {
        Outcome::Succeeded | Outcome::Skipped | Outcome::NotDeclared => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// Now, to the millisecond: runs a second apart are told apart, and overlaps seen.
fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// `cron` (its line asks for the random delay), `timer` under systemd, else who ran it.
fn who_started(request: &Request<'_>) -> String {
    if request.random_delay {
        return "cron".into();
    }
    if std::env::var_os("INVOCATION_ID").is_some() {
        return "timer".into();
    }
    crate::state::record::pusher()
}

/// A run's id: its UTC start to the millisecond, which orders the logs, and the pid.
fn run_id() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "{}-{}",
        now.strftime("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    )
    .replace('.', "")
}

fn sleep_up_to(limit: Duration) {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let pause = Duration::from_millis(random % (limit.as_millis() as u64).max(1));
    let until = Instant::now() + pause;
    while Instant::now() < until && !process::stop_requested() {
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
}

/// A run's log: every line up to `limit` bytes, then a count of what was cut.
struct RunLog {
    file: File,
    path: std::path::PathBuf,
    written: u64,
    limit: u64,
    cut: (u64, u64),
}

impl RunLog {
    fn create(path: &Path, limit: u64) -> Result<RunLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("failed to create job log `{}`", path.display()))?;
        Ok(RunLog {
            file,
            path: path.to_path_buf(),
            written: 0,
            limit,
            cut: (0, 0),
        })
    }

    fn line(&mut self, line: &str) {
        let size = line.len() as u64 + 1;
        if self.written + size > self.limit {
            self.cut.0 += 1;
            self.cut.1 += size;
            return;
        }
        self.written += size;
        if writeln!(self.file, "{line}").is_err() {
            output::warn_if_disk_full(&self.path);
        }
    }

    fn finish(&mut self) {
        if self.cut.0 > 0 {
            let _ = writeln!(
                self.file,
                "… {} ({}) not kept: the log keeps {} (`deploy.log_limit`)",
                output::count(self.cut.0 as usize, "line"),
                output::size(self.cut.1),
                output::iec_size(self.limit)
            );
        }
    }
}
