//! The pipeline: lock, materialize, link shared, steps, switch, restart, health, record, prune.
//!
//! The live site is only ever changed by the switch of `current`, and only after every step
//! passed. Anything that fails before the switch leaves the live release untouched; a restart,
//! health check or rolling-back step that fails after it switches back and restarts the old
//! release. Whatever happens, the deploy is recorded and the last line the pusher reads says
//! what is live. `rollback` shares the second half (switch, restart, health) and the session
//! (lock, log, record, prune).

use super::back::after_switch;
use super::checkout::make_release;
use super::go_live::{go_live, switch_back};
use super::session::{Session, Trigger};
use crate::config::Config;
use crate::outputs::Store;
use crate::pipeline::spare;
use crate::pipeline::stop::Stop;
use crate::release;
use crate::state::push_options::PushOptions;
use crate::state::record::{Action, DeployRecord, State, StepRecord};
use crate::state::refs::short_ref;
use crate::state::select::Target;
use crate::steps;
use crate::sys::output::{self, seconds, short};
use crate::sys::process;
use anyhow::{bail, Context, Result};
use git2::{Oid, Repository};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// Runs one deploy of `target`. Returns the exit code for the hook: failure when the deploy
/// failed, after saying so.
pub fn deploy(
    repo: &Repository,
    config: &Config,
    target: &Target,
    trigger: Trigger,
    options: &PushOptions,
) -> Result<ExitCode> {
    let mut run = Run::begin(repo, config, target, trigger, options)?;
    run.prepare();
    run.go_live();
    run.finish()
}

/// One deploy in its stages: `begin` (the lock, and whether there is anything to deploy),
/// `prepare` (the release and the steps before the switch), `go_live`, `finish` (record,
/// summary, spare). A push of several apps takes each through a stage before the next stage
/// starts (`apps`); the outcome so far says whether a stage still runs.
pub(super) struct Run<'a> {
    repo: &'a Repository,
    pub(super) config: &'a Config,
    target: &'a Target,
    trigger: Trigger,
    pub(super) session: Session,
    steps: Vec<StepRecord>,
    env: BTreeMap<String, String>,
    pub(super) outcome: Result<(), Stop>,
    /// Whether `go_live` ran to its end.
    pub(super) live: bool,
}

impl<'a> Run<'a> {
    pub(super) fn begin(
        repo: &'a Repository,
        config: &'a Config,
        target: &'a Target,
        trigger: Trigger,
        options: &PushOptions,
    ) -> Result<Run<'a>> {
        let commit = target.commit.to_string();
        // Pushes announce themselves, so that the newest of several waiting ones deploys.
        let push = trigger != Trigger::Manual;
        let newest_wins = push && config.deploy.queue == crate::config::Queue::Newest;
        let mut session = Session::lock(config, &commit, &target.git_ref, push)?;
        session.options = options.clone();
        session.subject = repo.find_commit(target.commit).ok().and_then(|c| {
            c.summary_bytes()
                .map(|s| String::from_utf8_lossy(s).into_owned())
        });
        let id = release::new_id(&session.layout, target.commit, SystemTime::now());
        if let Err(err) = session.start(id) {
            return Err(session.abandon(err));
        }
        let id = session.id.clone();
        // With nothing to deploy, the summary is the one line the pusher reads.
        let nothing = (trigger != Trigger::Manual && !options.force)
            .then(|| unchanged(repo, config, &session, target))
            .flatten();
        if nothing.is_none() {
            output::say(format!(
                "deploying {} ({}) as {id}",
                short(&commit),
                short_ref(&target.git_ref)
            ));
            if let Some(asked) = options.describe() {
                output::say(format!("the push asks: {asked}"));
            }
            if let Some(note) = &options.note {
                output::say(format!("note: {note}"));
            }
        }
        let overtaken = newest_wins
            .then(|| {
                crate::state::queue::overtaken_by(
                    &session.layout,
                    &target.git_ref,
                    &commit,
                    &session.records,
                )
            })
            .flatten();
        let mut outcome = match (overtaken, trigger) {
            (Some(newer), _) => Err(Stop::Superseded(newer)),
            (None, Trigger::PreReceive) => {
                check_gate_base(repo, &session.records, target).map_err(Stop::Error)
            }
            _ => Ok(()),
        };
        if let Some(nothing) = nothing.filter(|_| outcome.is_ok()) {
            outcome = Err(nothing);
        }
        Ok(Run {
            repo,
            config,
            target,
            trigger,
            session,
            steps: Vec::new(),
            env: BTreeMap::new(),
            outcome,
            live: false,
        })
    }

    /// The release, and the steps before the switch.
    pub(super) fn prepare(&mut self) {
        if self.outcome.is_ok() {
            match prepare(
                self.repo,
                self.config,
                &mut self.session,
                self.target,
                &mut self.steps,
            ) {
                Ok(env) => self.env = env,
                Err(stop) => self.outcome = Err(stop),
            }
        }
    }

    /// The switch, and what runs once live.
    pub(super) fn go_live(&mut self) {
        if self.outcome.is_ok() {
            self.outcome = live(
                self.config,
                &mut self.session,
                self.target,
                self.trigger,
                &mut self.steps,
                &self.env,
            );
            self.live = self.outcome.is_ok();
        }
    }

    /// Whether it stopped short of going live (and had something to deploy).
    pub(super) fn failed(&self) -> bool {
        matches!(&self.outcome, Err(stop) if !matches!(stop, Stop::Unchanged { .. }))
    }

    /// Records the deploy, says how it ended, and prepares the spare. Returns the exit code.
    pub(super) fn finish(self) -> Result<ExitCode> {
        let Run {
            repo,
            config,
            target,
            trigger,
            mut session,
            steps,
            outcome,
            ..
        } = self;
        let id = session.id.clone();
        let commit = target.commit.to_string();
        let mut entry = session.record(Action::Deploy, trigger, &id, target.old);
        entry.steps = steps;
        entry.steps.append(&mut session.down_steps);
        if let Err(stop) = &outcome {
            (entry.state, entry.failed_step, entry.error) = stop.describe();
        }
        let summary = outcome.map(|()| {
            format!(
                "deployed {} ({}) as {id} in {} — {}",
                short(&commit),
                short_ref(&target.git_ref),
                seconds(session.clock.elapsed()),
                session.stages()
            )
        });
        let live_commit = if entry.state == State::Succeeded {
            Some(commit.clone())
        } else {
            session.previous_commit.clone()
        };
        let layout = session.layout.clone();
        // The next push must find the spare's preparation under way, not yet to start.
        let reserved = live_commit
            .as_ref()
            .and_then(|_| spare::reserve(config, &layout));
        let mut code = session.finish(config, &entry, "deploy", summary)?;
        // Overtaken, a post-receive push did nothing wrong; in gate mode the push is rejected,
        // so that the branch moves only with what deploys.
        if entry.state == State::Superseded && trigger != Trigger::PreReceive
            || entry.state == State::Unchanged
        {
            code = ExitCode::SUCCESS;
        }
        if let Some(live) = live_commit {
            spare::after_deploy(config, &layout, repo.path(), &live, reserved);
        }
        Ok(code)
    }
}

/// With `deploy.path`: the stop of a push whose commit holds the app's folder (and its
/// `deploy.paths`) as the live release holds them, tree for tree.
fn unchanged(
    repo: &Repository,
    config: &Config,
    session: &Session,
    target: &Target,
) -> Option<Stop> {
    let view = release::view::View::of(&config.deploy);
    let live = session.previous_release.as_deref()?;
    release::holds_already(repo, &session.layout, live, &view, target.commit).then(|| {
        Stop::Unchanged {
            what: view.folders(),
            commit: target.commit.to_string(),
        }
    })
}

fn check_gate_base(repo: &Repository, records: &[DeployRecord], target: &Target) -> Result<()> {
    // A gate deploy that just finished may still be waiting for git to move the ref.
    if let Some(last) = records.last().filter(|r| {
        r.hook.as_deref() == Some("pre-receive")
            && matches!(r.state, State::Succeeded | State::Unchanged)
            && r.git_ref == target.git_ref
    }) {
        let landed = Oid::from_str(&last.commit).ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while repo.refname_to_id(&target.git_ref).ok() != landed && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let now = repo.refname_to_id(&target.git_ref).ok();
    if now != target.old {
        let name = |oid: Option<Oid>| {
            oid.map_or("nothing".to_string(), |oid| {
                short(&oid.to_string()).to_string()
            })
        };
        bail!(
            "`{}` is at {} now, but this push was based on {}: another push landed first; fetch, then push again",
            target.git_ref,
            name(now),
            name(target.old)
        );
    }
    Ok(())
}

/// Makes the release and runs the steps before the switch; returns the steps' environment.
fn prepare(
    repo: &Repository,
    config: &Config,
    session: &mut Session,
    target: &Target,
    steps: &mut Vec<StepRecord>,
) -> Result<BTreeMap<String, String>, Stop> {
    let layout = session.layout.clone();
    let id = session.id.clone();
    let dir = layout.release(&id);
    let commit = target.commit.to_string();

    if process::stop_requested() {
        return Err(Stop::Interrupted {
            during: "the wait for the lock".into(),
        });
    }
    if let Err(err) = make_release(repo, config, session, target) {
        // Half a release is of no use, and on a full disk it holds the space the next push
        // needs.
        if release::remove(&layout, &id).is_ok() {
            output::say(format!("removed the unfinished release {id}"));
        }
        return Err(err.into());
    }
    for note in release::link_shared(&layout, &dir, &config.shared.paths)? {
        output::say(note);
    }
    if let Some(written) = &mut session.written {
        for path in &config.shared.paths {
            written.entry(path.as_path());
        }
    }
    // A schedule that would not install stops the push before anything runs.
    crate::live::jobs::schedule_of(config, &dir)
        .context("the release's scheduled jobs cannot be installed")?;

    let previous_commit = session.previous_commit.clone();
    let mut env = steps::release_environment(
        config,
        &layout,
        &id,
        &commit,
        previous_commit.as_deref(),
        &target.git_ref,
    )?;
    if let Some(note) = &session.options.note {
        env.insert("ATS_PUSH_NOTE".to_string(), note.clone());
    }
    // Compose: the release's images are built (and its override written) before any step, so
    // that a migration step runs the new image; a failed build changes nothing that runs.
    if let Some(compose) = &config.compose {
        session.written = None;
        let clock = Instant::now();
        let built = crate::live::compose::Project::new(compose, &layout).prepare(&id, &dir, &env);
        session.timings.push(("build".into(), clock.elapsed()));
        if let Err(error) = built {
            output::error(format!("{error:#}"));
            return Err(Stop::Unproven {
                stage: "the Compose build".into(),
                error,
            });
        }
    }
    let tree = release::view::View::of(&config.deploy).tree(repo, target.commit)?;
    let store = Store::new(&layout);
    let mut before = steps::BeforeSwitch {
        config,
        store: &store,
        release_id: &id,
        release_dir: &dir,
        tree: &tree,
        env: &env,
        options: &session.options,
        sandbox: crate::steps::confine::Sandbox::for_release(config, &dir)?,
        records: Vec::new(),
        timings: Vec::new(),
    };
    let stopped = before.run();
    session.schema = crate::steps::schema::fingerprint(config, &tree);
    session.migrated = before.records.iter().any(|r| {
        r.status == crate::state::record::StepStatus::Ok
            && crate::steps::schema::migrating_steps(config).any(|s| s.name.as_str() == r.name)
    });
    note_steps_writes(config, &before.records, &mut session.written);
    steps.append(&mut before.records);
    session.timings.append(&mut before.timings);
    match stopped? {
        None => {}
        Some(steps::Stopped::Failed { name, exit }) => return Err(Stop::Step { name, exit }),
        Some(steps::Stopped::Interrupted { before }) => {
            return Err(Stop::Interrupted {
                during: format!("the steps, before `{before}`"),
            })
        }
    }
    // What goes live must be on disk first: after a power loss, `current` must not point at
    // files the kernel had not written yet.
    let clock = Instant::now();
    let durability = release::durable::make_durable(&layout, &id, session.written.as_ref())?;
    tracing::debug!(
        "made the release durable in {:?}: {durability}",
        clock.elapsed()
    );
    session.sync = Some(clock.elapsed());
    session.timings.push(("sync".into(), clock.elapsed()));
    Ok(env)
}

/// What the steps before the switch wrote into the release: the links of the outputs they
/// reused; a step that ran a command (or a reused one's key command) may have written
/// anything, and then what was written is no longer known.
fn note_steps_writes(
    config: &Config,
    records: &[StepRecord],
    written: &mut Option<release::durable::Written>,
) {
    use crate::state::record::StepStatus;
    for record in records {
        let Some(paths) = written.as_mut() else {
            return;
        };
        let step = config
            .steps_before_switch()
            .find(|s| s.name.as_str() == record.name);
        match (record.status, step) {
            (StepStatus::Skipped, _) => {}
            (StepStatus::Reused, Some(step)) if step.key.is_none() => {
                for output in &step.outputs {
                    paths.entry(output.as_path());
                }
            }
            _ => *written = None,
        }
    }
}

/// Switches to the release and runs what comes once it is live.
fn live(
    config: &Config,
    session: &mut Session,
    target: &Target,
    trigger: Trigger,
    steps: &mut Vec<StepRecord>,
    env: &BTreeMap<String, String>,
) -> Result<(), Stop> {
    let layout = session.layout.clone();
    let id = session.id.clone();
    if process::stop_requested() {
        return Err(Stop::Interrupted {
            during: "the switch".into(),
        });
    }

    let mut intent = session.record(Action::Deploy, trigger, &id, target.old);
    intent.steps = steps.clone();
    go_live(config, session, &intent, env)?;

    let width = steps::prefix_width(config);
    let sandbox = match config.steps_after_switch().next() {
        Some(_) => crate::steps::confine::Sandbox::for_release(config, &layout.current())?,
        None => None,
    };
    for step in config.steps_after_switch() {
        if session.options.skips(step.name.as_str()) {
            steps.push(steps::skipped(step));
            continue;
        }
        let (record, exit) = steps::run(step, &layout.current(), env, width, sandbox.as_ref())?;
        session.timings.push((
            step.name.to_string(),
            Duration::from_millis(record.duration_ms),
        ));
        steps.push(record);
        if exit.success() {
            continue;
        }
        if step.rollback_on_failure {
            let error = anyhow::anyhow!("step `{}` failed ({exit})", step.name);
            let restored = switch_back(config, session);
            return Err(after_switch(
                &format!("step {}", step.name),
                error,
                restored,
                process::stop_requested(),
            ));
        }
        output::warn(format!(
            "step `{}` failed after the switch; {id} stays live",
            step.name
        ));
    }
    Ok(())
}
