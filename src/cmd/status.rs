//! `ats-hook status [--json]`: what is live, since when, from which push; the lock holder.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::Location;
use crate::outputs::Store;
use crate::state::layout::Layout;
use crate::state::lock::{self, Holder};
use crate::state::record::{self, DeployRecord};
use crate::state::refs::short_ref;
use crate::sys::output::{self, printable, short};

#[derive(Debug, Serialize)]
struct Status {
    root: String,
    live: Option<Live>,
    last_deploy: Option<DeployRecord>,
    lock: Option<Holder>,
    releases: Vec<String>,
    outputs: Outputs,
    /// The spare release the next push builds from, or why preparing it failed.
    spare: crate::pipeline::spare::State,
    /// With `[serve]`: which slot is live, what each runs, where the proxy points.
    #[serde(skip_serializing_if = "Option::is_none")]
    handover: Option<Handover>,
    /// The installed scheduled jobs.
    jobs: Vec<JobHealth>,
}

#[derive(Debug, Serialize)]
struct JobHealth {
    name: String,
    schedule: String,
    last_outcome: Option<&'static str>,
    last_started_at: Option<String>,
    /// How many of its last runs in a row failed.
    failing: usize,
}

fn jobs(layout: &Layout) -> Result<(String, Vec<JobHealth>)> {
    use crate::live::jobs::{history, Installed};
    let installed = Installed::read(layout)?;
    let runs = history::read_all(layout)?;
    let list = installed
        .jobs
        .iter()
        .map(|job| {
            let (last, failing) = history::last_of(&runs, &job.name);
            JobHealth {
                name: job.name.clone(),
                schedule: job.schedule.clone(),
                last_outcome: last.map(|r| r.outcome.as_str()),
                last_started_at: last.map(|r| r.started_at.clone()),
                failing,
            }
        })
        .collect();
    Ok((installed.installer, list))
}

#[derive(Debug, Serialize)]
struct Handover {
    live_slot: Option<String>,
    slots: Vec<SlotStatus>,
    /// The address nginx's upstream file names (unknown for a proxy run by a command).
    proxy_points_at: Option<String>,
    /// Whether that address is the live slot's.
    proxy_as_recorded: Option<bool>,
    workers: Vec<WorkerStatus>,
}

#[derive(Debug, Serialize)]
struct WorkerStatus {
    name: String,
    release: Option<String>,
    pid: Option<i32>,
}

#[derive(Debug, Serialize)]
struct SlotStatus {
    name: String,
    addr: String,
    release: Option<String>,
    commit: Option<String>,
    pid: Option<i32>,
    unit: Option<String>,
    /// With `[compose]`: the web service's container on the slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    running: bool,
    /// Why it does not run, when it should.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

fn handover(config: &crate::config::Config, layout: &Layout) -> Option<Handover> {
    let serve = config.serve.as_ref()?;
    let slots = crate::live::slots::Slots::new(serve, layout);
    let live = slots.live();
    let list = slots
        .all()
        .iter()
        .map(|slot| {
            let running = slots.running(slot);
            let alive = slots.alive(slot);
            SlotStatus {
                name: slot.name.to_string(),
                addr: slot.addr.to_string(),
                release: running.as_ref().map(|r| r.release.clone()),
                commit: running.as_ref().map(|r| r.commit.clone()),
                pid: running.as_ref().and_then(|r| r.daemon).map(|d| d.pid),
                unit: running.as_ref().and_then(|r| r.unit.clone()),
                container: running.as_ref().and_then(|r| r.container.clone()),
                running: alive.is_ok(),
                problem: running.as_ref().and(alive.err()),
            }
        })
        .collect();
    let points_at = match &serve.proxy.caddy {
        Some(_) => crate::live::proxy::caddy_points_at(&serve.proxy),
        None => serve
            .proxy
            .nginx
            .as_deref()
            .and_then(crate::live::proxy::nginx_points_at),
    };
    let as_recorded = match (&points_at, &live) {
        (Some(addr), Some(live)) => Some(*addr == live.addr.to_string()),
        (Some(_), None) => Some(false),
        _ => None,
    };
    let workers = crate::live::workers::Workers::new(serve, layout);
    let workers = serve
        .workers
        .iter()
        .map(|worker| {
            let running = workers.running(worker);
            WorkerStatus {
                name: worker.name.to_string(),
                release: running.as_ref().map(|r| r.release.clone()),
                pid: running.map(|r| r.daemon.pid),
            }
        })
        .collect();
    Some(Handover {
        workers,
        live_slot: live.map(|slot| slot.name.to_string()),
        slots: list,
        proxy_points_at: points_at,
        proxy_as_recorded: as_recorded,
    })
}

fn print_handover(out: &mut dyn Write, handover: &Handover) -> Result<()> {
    for (n, slot) in handover.slots.iter().enumerate() {
        let live = handover.live_slot.as_deref() == Some(slot.name.as_str());
        let what = match (&slot.release, slot.running) {
            (Some(release), true) => {
                let how = match (&slot.unit, slot.pid) {
                    _ if slot.container.is_some() => {
                        format!(
                            " (container {})",
                            slot.container.as_deref().unwrap_or_default()
                        )
                    }
                    (Some(unit), _) => format!(" ({unit})"),
                    (None, Some(pid)) => format!(" (pid {pid})"),
                    _ => String::new(),
                };
                format!("runs {release}{how}")
            }
            (Some(release), false) => format!(
                "should run {release}, but {}",
                slot.problem.as_deref().unwrap_or("it does not")
            ),
            (None, _) => "runs nothing".to_string(),
        };
        writeln!(
            out,
            "{} {} {:<22} {:<5} {what}",
            if n == 0 {
                "slots:      "
            } else {
                "            "
            },
            slot.name,
            slot.addr,
            if live { "live" } else { "idle" },
        )?;
    }
    match (&handover.proxy_points_at, handover.proxy_as_recorded) {
        (Some(addr), Some(true)) => writeln!(out, "proxy:       it sends to {addr}, the live slot")?,
        (Some(addr), _) => writeln!(
            out,
            "proxy:       it sends to {addr}, which is NOT the live slot's address: the next deploy or `rollback` points it right"
        )?,
        (None, _) => {}
    }
    for worker in &handover.workers {
        match (&worker.release, worker.pid) {
            (Some(release), Some(pid)) => writeln!(
                out,
                "worker:      {} runs {release} (pid {pid})",
                worker.name
            )?,
            _ => writeln!(
                out,
                "worker:      {} runs nothing started by ats-hook",
                worker.name
            )?,
        }
    }
    Ok(())
}

/// The output store: how many builds it keeps and the disk they take.
#[derive(Debug, Serialize)]
struct Outputs {
    dir: String,
    builds: usize,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct Live {
    release: String,
    commit: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    since: Option<String>,
    pusher: Option<String>,
    subject: Option<String>,
    note: Option<String>,
}

pub fn run(location: &Location, json: bool, out: &mut dyn Write) -> Result<ExitCode> {
    let apps = super::load_apps(location)?;
    if !apps.several() || location.app.is_some() {
        return one(&apps.pick(location.app.as_deref())?, json, out);
    }
    // Every app, one after the other; as JSON, `{"apps": [{"app": NAME, …status}]}`.
    let mut all = Vec::new();
    for (n, app) in apps.list.iter().enumerate() {
        let name = app.name.as_deref().unwrap_or_default();
        if json {
            let mut text = Vec::new();
            one(&app.config, true, &mut text)?;
            let mut status: serde_json::Value =
                serde_json::from_slice(&text).context("failed to read the status back")?;
            status["app"] = name.into();
            all.push(status);
        } else {
            if n > 0 {
                writeln!(out)?;
            }
            writeln!(out, "app {name}:")?;
            one(&app.config, false, out)?;
        }
    }
    if json {
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ "apps": all }))
            .context("failed to write status")?;
        writeln!(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The status of one app.
fn one(config: &crate::config::Config, json: bool, out: &mut dyn Write) -> Result<ExitCode> {
    let layout = Layout::new(&config.deploy.root);
    let records = record::read_all(&layout.deploys_file())?;
    let live = layout.live_release()?.map(|release| {
        let record = record::live_record(&records, &release);
        Live {
            commit: record.map(|r| r.commit.clone()),
            git_ref: record.map(|r| r.git_ref.clone()),
            since: record.map(|r| r.finished_at.clone()),
            pusher: record.map(|r| r.pusher.clone()),
            subject: record.and_then(|r| r.subject.clone()),
            note: record.and_then(|r| r.note.clone()),
            release,
        }
    });
    let mut releases = layout.release_ids()?;
    record::sort_chronologically(&mut releases, &records);
    let store = Store::new(&layout);
    let outputs = Outputs {
        dir: store.dir().display().to_string(),
        builds: store.list()?.len(),
        bytes: store.disk_usage()?,
    };
    let status = Status {
        root: layout.root().display().to_string(),
        live,
        last_deploy: records.last().cloned(),
        lock: lock::current_holder(&layout.lock_file())?,
        releases,
        outputs,
        spare: crate::pipeline::spare::state(&layout),
        handover: handover(config, &layout),
        jobs: Vec::new(),
    };
    let (installer, job_list) = jobs(&layout)?;
    let status = Status {
        jobs: job_list,
        ..status
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &status).context("failed to write status")?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "deploy root: {}", status.root)?;
    match &status.live {
        None => writeln!(out, "live:        nothing yet")?,
        Some(live) => {
            let what = match (&live.commit, &live.git_ref) {
                (Some(commit), Some(git_ref)) => {
                    format!(" ({} of {})", short(commit), short_ref(git_ref))
                }
                _ => String::new(),
            };
            writeln!(out, "live:        {}{what}", live.release)?;
            if !layout.release(&live.release).is_dir() {
                writeln!(
                    out,
                    "             its folder is gone: push again or run `ats-hook deploy` to replace it"
                )?;
            }
            let switched = records
                .iter()
                .rev()
                .find(|r| r.release == live.release)
                .filter(|r| r.state == record::State::Switching);
            if let (Some(dead), None) = (switched, &status.lock) {
                writeln!(
                    out,
                    "             its deploy died after switching to it, before any check passed: the next push, `deploy` or `rollback` switches back to {}",
                    dead.previous_release.as_deref().unwrap_or("nothing")
                )?;
            }
            if let Some(subject) = &live.subject {
                writeln!(out, "commit:      {}", printable(subject))?;
            }
            if let (Some(since), Some(pusher)) = (&live.since, &live.pusher) {
                writeln!(out, "since:       {since}, pushed by {}", printable(pusher))?;
            }
            if let Some(note) = &live.note {
                writeln!(out, "note:        {}", printable(note))?;
            }
        }
    }
    if let Some(last) = &status.last_deploy {
        let detail = match (&last.failed_step, &last.error) {
            (_, Some(error)) => format!(": {error}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "last deploy: {} {} ({} of {}) at {} by {}{}{detail}",
            last.id,
            last.state.as_str(),
            short(&last.commit),
            short_ref(&last.git_ref),
            last.finished_at,
            printable(&last.pusher),
            last.about()
        )?;
    }
    if let Some(handover) = &status.handover {
        print_handover(out, handover)?;
    }
    match &status.lock {
        Some(holder) => writeln!(out, "lock:        held by {holder}")?,
        None => writeln!(out, "lock:        free")?,
    }
    writeln!(out, "releases:    {} on disk", status.releases.len())?;
    match &status.spare {
        crate::pipeline::spare::State {
            failed: Some(why),
            failed_at,
            ..
        } => writeln!(
            out,
            "spare:       preparing it failed at {}: {why}; the next push checks its tree out whole",
            failed_at.as_deref().unwrap_or("?")
        )?,
        crate::pipeline::spare::State {
            commit: Some(commit),
            ..
        } => writeln!(
            out,
            "spare:       ready, holding {}: the next push builds from it",
            short(commit)
        )?,
        _ => {}
    }
    if !status.jobs.is_empty() {
        writeln!(
            out,
            "jobs:        {} installed ({installer}): `ats-hook jobs` lists them",
            status.jobs.len()
        )?;
        for job in status.jobs.iter().filter(|j| j.failing > 0) {
            writeln!(
                out,
                "             job {} is FAILING: its last {} failed (`ats-hook jobs log {}`)",
                job.name,
                if job.failing == 1 {
                    "run".to_string()
                } else {
                    format!("{} runs", job.failing)
                },
                job.name
            )?;
        }
    }
    if status.outputs.builds > 0 || status.outputs.bytes > 0 {
        writeln!(
            out,
            "outputs:     {}, {} in {}",
            output::count(status.outputs.builds, "stored build"),
            output::size(status.outputs.bytes),
            status.outputs.dir
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
