//! The pipeline: lock, materialize, link shared, steps, switch, restart, record, prune.
//!
//! The live site is only ever changed by the switch of `current`, and only after every step
//! passed. Anything that fails before the switch leaves the live release untouched; a restart
//! that fails after it switches back and restarts the old release. Whatever happens, the deploy
//! is recorded and the last line the pusher reads says what is live.

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use git2::Repository;

use crate::config::Config;
use crate::layout::Layout;
use crate::lock::{self, Holder};
use crate::output::{self, seconds, short};
use crate::process::{self, Exit};
use crate::record::{self, DeployRecord, State, StepRecord};
use crate::refs::short_ref;
use crate::release;
use crate::restart;
use crate::select::Target;
use crate::steps::{self, DeployVars};

/// Why a deploy stopped short.
enum Stop {
    Step {
        name: String,
        exit: Exit,
    },
    Interrupted {
        during: String,
    },
    Error(anyhow::Error),
    RestartFailed {
        error: anyhow::Error,
        restored: Result<()>,
    },
}

impl From<anyhow::Error> for Stop {
    fn from(error: anyhow::Error) -> Stop {
        Stop::Error(error)
    }
}

/// Everything one deploy learns as it goes, for the record and the summary.
struct Run {
    id: String,
    steps: Vec<StepRecord>,
    /// (stage, seconds) in order, for the summary line.
    timings: Vec<(String, std::time::Duration)>,
}

/// Who pushed: set by the SSH gate when known, else the account running the hook.
pub fn pusher() -> String {
    for key in ["ATS_PUSHER", "USER", "LOGNAME"] {
        if let Ok(value) = std::env::var(key) {
            if !value.is_empty() {
                return value;
            }
        }
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

fn now_rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Runs one deploy of `target`. Returns the exit code for the hook: failure when the deploy
/// failed, after saying so.
pub fn deploy(repo: &Repository, config: &Config, target: &Target) -> Result<ExitCode> {
    let layout = Layout::new(&config.deploy.root);
    layout.create()?;
    // Refuse early, before anything runs, when `current` is not ours to switch.
    layout.live_release()?;
    process::install_signal_handlers()?;

    let commit = target.commit.to_string();
    let mut me = Holder {
        pid: std::process::id(),
        commit: commit.clone(),
        git_ref: target.git_ref.clone(),
        release: String::new(),
        since: now_rfc3339(SystemTime::now()),
        pusher: pusher(),
    };
    let mut lock = lock::acquire(
        &layout.lock_file(),
        config.deploy.lock_timeout.0,
        &me,
        |holder, waited| {
            let waited = if waited.as_secs() > 0 {
                format!(" (waited {})", seconds(waited))
            } else {
                String::new()
            };
            match holder {
                Some(holder) => output::say(format!(
                    "waiting for the deploy lock held by {holder}{waited}"
                )),
                None => output::say(format!("waiting for the deploy lock{waited}")),
            }
        },
    )?;
    if let Some(dead) = lock.interrupted.take() {
        record_interrupted(&layout, &dead)?;
    }

    let started = SystemTime::now();
    let clock = Instant::now();
    let id = release::new_id(&layout, target.commit, started);
    me.release = id.clone();
    me.since = now_rfc3339(started);
    lock.update(&me)?;

    let log_path = layout.log_file(&id);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("failed to create deploy log `{}`", log_path.display()))?;
    let _context = output::begin_deploy(&id, &commit, &target.git_ref, Some(log));
    tracing::debug!(pid = me.pid, "lock taken");
    output::say(format!(
        "deploying {} ({}) as {id}",
        short(&commit),
        short_ref(&target.git_ref)
    ));

    let records = record::read_all(&layout.deploys_file())?;
    let previous_release = layout.live_release()?;
    let previous_commit = previous_release
        .as_deref()
        .and_then(|live| record::live_record(&records, live))
        .map(|r| r.commit.clone());

    let mut run = Run {
        id: id.clone(),
        steps: Vec::new(),
        timings: Vec::new(),
    };
    let outcome = pipeline(
        repo,
        config,
        &layout,
        target,
        previous_release.as_deref(),
        previous_commit.as_deref(),
        &mut run,
    );

    let (state, failed_step, error) = match &outcome {
        Ok(()) => (State::Succeeded, None, None),
        Err(Stop::Step { name, exit }) => (
            if *exit == Exit::Interrupted {
                State::Interrupted
            } else {
                State::Failed
            },
            Some(name.clone()),
            Some(format!("step `{name}` failed ({exit})")),
        ),
        Err(Stop::Interrupted { during }) => (
            State::Interrupted,
            None,
            Some(format!("interrupted during {during}")),
        ),
        Err(Stop::Error(err)) => (State::Failed, None, Some(format!("{err:#}"))),
        Err(Stop::RestartFailed { error, restored }) => (
            if restored.is_ok() {
                State::RolledBack
            } else {
                State::Failed
            },
            Some("restart".to_string()),
            Some(format!("{error:#}")),
        ),
    };
    let finished = SystemTime::now();
    let entry = DeployRecord {
        id: id.clone(),
        git_ref: target.git_ref.clone(),
        old_commit: target.old.map(|oid| oid.to_string()),
        commit: commit.clone(),
        release: id.clone(),
        previous_release: previous_release.clone(),
        state,
        failed_step,
        error,
        steps: run.steps.clone(),
        pusher: me.pusher.clone(),
        started_at: now_rfc3339(started),
        finished_at: now_rfc3339(finished),
        duration_ms: clock.elapsed().as_millis() as u64,
    };
    record::append(&layout.deploys_file(), &entry)?;

    let pruned = prune(config, &layout, &id);
    lock.release()?;
    if let Err(err) = pruned {
        output::warn(format!("{err:#}"));
    }

    // What was live before this deploy, as the summary names it.
    let was_live = previous_commit
        .as_deref()
        .map(|c| short(c).to_string())
        .or(previous_release.clone());
    let still_live = match &was_live {
        Some(live) => format!("{live} is still live"),
        None => "nothing is live yet".to_string(),
    };
    let summary = match outcome {
        Ok(()) => {
            let stages: Vec<String> = run
                .timings
                .iter()
                .map(|(stage, took)| format!("{stage} {}", seconds(*took)))
                .collect();
            output::say(format!(
                "deployed {} ({}) as {} in {} — {}",
                short(&commit),
                short_ref(&target.git_ref),
                run.id,
                seconds(clock.elapsed()),
                stages.join(", ")
            ));
            return Ok(ExitCode::SUCCESS);
        }
        Err(Stop::Step {
            name,
            exit: Exit::Interrupted,
        }) => {
            format!("deploy INTERRUPTED during step {name}; {still_live}")
        }
        Err(Stop::Step { name, exit }) => {
            format!("deploy FAILED at step {name} ({exit}); {still_live}")
        }
        Err(Stop::Interrupted { during }) => {
            format!("deploy INTERRUPTED during {during}; {still_live}")
        }
        Err(Stop::Error(err)) => {
            output::error(format!("{err:#}"));
            format!("deploy FAILED; {still_live}")
        }
        Err(Stop::RestartFailed {
            restored: Ok(()), ..
        }) => match &was_live {
            Some(live) => format!("deploy FAILED at restart; switched back, {live} is live again"),
            None => "deploy FAILED at restart; nothing is live".to_string(),
        },
        Err(Stop::RestartFailed {
            restored: Err(err), ..
        }) => {
            output::error(format!("switching back failed too: {err:#}"));
            format!("deploy FAILED at restart and could not switch back; {id} is live")
        }
    };
    output::say(summary);
    Ok(ExitCode::FAILURE)
}

fn pipeline(
    repo: &Repository,
    config: &Config,
    layout: &Layout,
    target: &Target,
    previous_release: Option<&str>,
    previous_commit: Option<&str>,
    run: &mut Run,
) -> Result<(), Stop> {
    let id = run.id.clone();
    let dir = layout.release(&id);
    let commit = target.commit.to_string();

    let clock = Instant::now();
    let checkout = release::materialize(repo, target.commit, &dir, &layout.index_file(&id))?;
    run.timings.push(("checkout".into(), clock.elapsed()));
    output::say(format!(
        "checked out {} files ({}) in {}",
        checkout.files,
        output::size(checkout.bytes),
        seconds(clock.elapsed())
    ));
    for note in release::link_shared(layout, &dir, &config.shared.paths)? {
        output::say(note);
    }

    let vars = DeployVars {
        release_dir: &dir,
        release_id: &id,
        commit: &commit,
        previous_commit,
        git_ref: &target.git_ref,
        deploy_root: layout.root(),
    };
    let env = steps::environment(config, &vars)?;
    let width = steps::prefix_width(config);
    for step in &config.steps {
        if process::stop_requested() {
            return Err(Stop::Interrupted {
                during: format!("the steps, before `{}`", step.name),
            });
        }
        let (record, exit) = steps::run(step, &dir, &env, width)?;
        run.timings.push((
            step.name.to_string(),
            std::time::Duration::from_millis(record.duration_ms),
        ));
        run.steps.push(record);
        if !exit.success() {
            return Err(Stop::Step {
                name: step.name.to_string(),
                exit,
            });
        }
    }
    if process::stop_requested() {
        return Err(Stop::Interrupted {
            during: "the switch".into(),
        });
    }

    release::switch_current(layout, &id)?;
    output::say(format!("switched current to {id}"));

    if config.restart.is_empty() {
        return Ok(());
    }
    let clock = Instant::now();
    let restarted = restart::run(&config.restart, layout, &layout.current(), &env, width);
    run.timings.push(("restart".into(), clock.elapsed()));
    if let Err(error) = restarted {
        output::error(format!("restart failed: {error:#}"));
        let restored = switch_back(config, layout, previous_release, &env, width);
        return Err(Stop::RestartFailed { error, restored });
    }
    Ok(())
}

/// After a failed restart: `current` goes back to the previous release, which is restarted too.
fn switch_back(
    config: &Config,
    layout: &Layout,
    previous: Option<&str>,
    env: &std::collections::BTreeMap<String, String>,
    width: usize,
) -> Result<()> {
    release::restore_current(layout, previous)?;
    let Some(previous) = previous else {
        output::say("removed `current`: nothing was live before this deploy");
        return Ok(());
    };
    output::say(format!("switched current back to {previous}"));
    restart::run(
        &config.restart,
        layout,
        &layout.release(previous),
        env,
        width,
    )
    .context("restarting the previous release failed")
}

fn prune(config: &Config, layout: &Layout, this_deploy: &str) -> Result<()> {
    let records = record::read_all(&layout.deploys_file())?;
    let live = layout.live_release()?;
    let mut on_disk = layout.release_ids()?;
    record::sort_chronologically(&mut on_disk, &records);
    let rollback =
        record::rollback_target(&records, live.as_deref(), &on_disk).map(|r| r.release.clone());
    let mut protected = vec![this_deploy];
    protected.extend(live.as_deref());
    protected.extend(rollback.as_deref());
    let went_live = |id: &str| record::live_record(&records, id).is_some();
    let removed = release::prune(
        layout,
        &on_disk,
        config.deploy.keep_releases,
        &protected,
        &went_live,
    )?;
    if !removed.is_empty() {
        output::say(format!(
            "pruned {} old release(s): {}",
            removed.len(),
            removed.join(", ")
        ));
    }
    Ok(())
}

/// A deploy whose process died holding the lock: recorded so the history has no gap.
fn record_interrupted(layout: &Layout, dead: &Holder) -> Result<()> {
    output::warn(format!(
        "the previous deploy, {dead}, did not finish (its process died); recording it as interrupted"
    ));
    let now = now_rfc3339(SystemTime::now());
    let release = if dead.release.is_empty() {
        "unknown".to_string()
    } else {
        dead.release.clone()
    };
    record::append(
        &layout.deploys_file(),
        &DeployRecord {
            id: release.clone(),
            git_ref: dead.git_ref.clone(),
            old_commit: None,
            commit: dead.commit.clone(),
            release,
            previous_release: None,
            state: State::Interrupted,
            failed_step: None,
            error: Some(format!(
                "ats-hook (pid {}) died before the deploy finished",
                dead.pid
            )),
            steps: Vec::new(),
            pusher: dead.pusher.clone(),
            started_at: dead.since.clone(),
            finished_at: now,
            duration_ms: 0,
        },
    )
}
