//! The pipeline: lock, materialize, link shared, steps, switch, restart, health, record, prune.
//!
//! The live site is only ever changed by the switch of `current`, and only after every step
//! passed. Anything that fails before the switch leaves the live release untouched; a restart,
//! health check or rolling-back step that fails after it switches back and restarts the old
//! release. Whatever happens, the deploy is recorded and the last line the pusher reads says
//! what is live. `rollback` shares the second half (switch, restart, health) and the session
//! (lock, log, record, prune).

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use git2::{Oid, Repository};

use crate::config::Config;
use crate::live::{health, restart};
use crate::outputs::Store;
use crate::pipeline::stop::Stop;
use crate::pipeline::{recover, spare};
use crate::release::{self, prune};
use crate::state::layout::Layout;
use crate::state::lock::{self, DeployLock, Holder};
use crate::state::push_options::PushOptions;
use crate::state::record::{self, Action, DeployRecord, State, StepRecord};
use crate::state::refs::short_ref;
use crate::state::select::Target;
use crate::steps;
use crate::sys::output::{self, rfc3339, seconds, short};
use crate::sys::process;

/// What started a deploy; recorded, and gate mode checks the pushed base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    PostReceive,
    /// Gate mode: the push is accepted only if the deploy succeeds.
    PreReceive,
    Manual,
}

impl Trigger {
    fn hook_name(self) -> Option<String> {
        match self {
            Trigger::PostReceive => Some("post-receive".into()),
            Trigger::PreReceive => Some("pre-receive".into()),
            Trigger::Manual => None,
        }
    }
}

/// Who pushed: set by the SSH gate when known, else who ran `sudo` (`sudo -u deployer
/// ats-hook rollback` is the admin's), else the account running the hook.
pub fn pusher() -> String {
    for key in ["ATS_PUSHER", "SUDO_USER", "USER", "LOGNAME"] {
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

/// One run under the deploy lock: its id, log, history and timings.
struct Session {
    layout: Layout,
    lock: DeployLock,
    holder: Holder,
    id: String,
    started: SystemTime,
    clock: Instant,
    records: Vec<DeployRecord>,
    /// What was live when the lock was taken.
    previous_release: Option<String>,
    previous_commit: Option<String>,
    timings: Vec<(String, Duration)>,
    /// The old release the new one was built from, and how long making its files took.
    built_from: Option<String>,
    checkout: Option<Duration>,
    /// How long making the release durable took.
    sync: Option<Duration>,
    /// How much step output the run's log keeps.
    log_limit: u64,
    /// What the push asked for (`git push -o ats.…`).
    options: PushOptions,
    /// The subject line of the commit going live.
    subject: Option<String>,
    /// Its schema fingerprint (`step.migrations`), and whether a migrating step ran.
    schema: Option<String>,
    migrated: bool,
    /// `down` commands run on the way back, recorded with the steps.
    down_steps: Vec<StepRecord>,
    _output: Option<output::DeployGuard>,
}

impl Session {
    /// Takes the deploy lock (waiting, and saying for whom), and records a deploy that died
    /// holding it.
    fn lock(config: &Config, commit: &str, git_ref: &str, announce: bool) -> Result<Session> {
        let layout = Layout::new(&config.deploy.root);
        layout.refuse_root_on_a_users_root()?;
        layout.create()?;
        // Refuse early, before anything runs, when `current` is not ours to switch.
        layout.live_release()?;
        process::install_signal_handlers()?;
        if announce {
            crate::state::queue::arrive(&layout, git_ref, commit)?;
        }
        let holder = Holder {
            unrecorded: None,
            pid: std::process::id(),
            commit: commit.to_string(),
            git_ref: git_ref.to_string(),
            release: String::new(),
            since: rfc3339(SystemTime::now()),
            pusher: pusher(),
        };
        let mut lock = lock::acquire(
            &layout.lock_file(),
            config.deploy.lock_timeout.0,
            &holder,
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
            recover::stop_orphans(&layout);
            let recovered = record::read_all(&layout.deploys_file())
                .and_then(|records| recover::after_death(config, &layout, &records, &dead));
            if let Err(err) = recovered {
                // The dead run stays in the lock file for the next run to recover, and this
                // one leaves no trace of its own there.
                if let Err(restore) = lock.update(&dead) {
                    output::warn(format!("{restore:#}"));
                }
                return Err(err);
            }
        }
        process::record_groups_in(Some(layout.group_file()));
        let read = || -> Result<_> {
            let records = record::read_all(&layout.deploys_file())?;
            let previous_release = layout.live_release()?;
            Ok((records, previous_release))
        };
        let (records, previous_release) = match read() {
            Ok(read) => read,
            Err(err) => {
                // Nothing ran: the lock goes back empty, so no later run takes this one for a
                // deploy that died.
                if let Err(release) = lock.release() {
                    output::warn(format!("{release:#}"));
                }
                return Err(err);
            }
        };
        if let Some(gone) = previous_release
            .as_deref()
            .filter(|id| !layout.release(id).is_dir())
        {
            output::warn(format!(
                "`current` points at release {gone}, whose folder is gone: this deploy replaces it"
            ));
        }
        let previous_commit = previous_release
            .as_deref()
            .and_then(|live| record::live_record(&records, live))
            .map(|r| r.commit.clone());
        Ok(Session {
            layout,
            lock,
            holder,
            id: String::new(),
            started: SystemTime::now(),
            clock: Instant::now(),
            records,
            previous_release,
            previous_commit,
            timings: Vec::new(),
            built_from: None,
            checkout: None,
            sync: None,
            log_limit: config.deploy.log_limit.0,
            options: PushOptions::default(),
            subject: None,
            schema: None,
            migrated: false,
            down_steps: Vec::new(),
            _output: None,
        })
    }

    /// Names the run, opens its log, and tags every line after this with it.
    fn start(&mut self, id: String) -> Result<()> {
        self.started = SystemTime::now();
        self.clock = Instant::now();
        self.holder.release = id.clone();
        self.holder.since = rfc3339(self.started);
        self.lock.update(&self.holder)?;
        let log_path = self.layout.log_file(&id);
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("failed to create deploy log `{}`", log_path.display()))?;
        self._output = Some(output::begin_deploy(
            &id,
            &self.holder.commit,
            &self.holder.git_ref,
            Some(log),
            self.log_limit,
        ));
        self.id = id;
        Ok(())
    }

    /// What was live before, as a summary names it.
    fn was_live(&self) -> Option<String> {
        self.previous_commit
            .as_deref()
            .map(|c| short(c).to_string())
            .or(self.previous_release.clone())
    }

    fn record(
        &self,
        action: Action,
        trigger: Trigger,
        release: &str,
        old: Option<Oid>,
    ) -> DeployRecord {
        DeployRecord {
            id: self.id.clone(),
            action,
            hook: trigger.hook_name(),
            git_ref: self.holder.git_ref.clone(),
            old_commit: old.map(|oid| oid.to_string()),
            commit: self.holder.commit.clone(),
            subject: self.subject.clone(),
            schema: self.schema.clone(),
            release: release.to_string(),
            previous_release: self.previous_release.clone(),
            built_from: self.built_from.clone(),
            checkout_ms: self.checkout.map(|d| d.as_millis() as u64),
            sync_ms: self.sync.map(|d| d.as_millis() as u64),
            state: State::Succeeded,
            failed_step: None,
            error: None,
            steps: Vec::new(),
            pusher: self.holder.pusher.clone(),
            note: self.options.note.clone(),
            no_restart: self.options.no_restart,
            started_at: rfc3339(self.started),
            finished_at: rfc3339(SystemTime::now()),
            duration_ms: self.clock.elapsed().as_millis() as u64,
        }
    }

    /// Records the run, prunes, lets the next deploy in, and prints the summary (the success
    /// line, or what stopped `what`): the last line, still tagged with this run and kept in its
    /// log. The exit code says whether the run succeeded.
    fn finish(
        mut self,
        config: &Config,
        entry: &DeployRecord,
        what: &str,
        outcome: Result<String, Stop>,
    ) -> Result<ExitCode> {
        let appended = record::append(&self.layout.deploys_file(), entry);
        let was_live = self.was_live();
        if appended.is_ok() {
            // The history read under the lock, and this run: all of it, without reading it
            // again.
            self.records.push(entry.clone());
            let pruned = prune::prune(config, &self.layout, &self.records, &self.id);
            self.lock.release()?;
            if let Err(err) = pruned {
                output::warn(format!("{err:#}"));
            }
        } else {
            // The lock file keeps naming this run, with its record when it fits there, so the
            // next run appends it (or, past a switch nobody vouched for, puts back what was
            // live): the history then matches what is live.
            self.holder.unrecorded = serde_json::to_string(entry).ok();
            if let Err(err) = self.lock.update(&self.holder) {
                tracing::debug!("could not keep the record in the lock file: {err:#}");
            }
        }
        let summary = match outcome {
            Ok(summary) => summary,
            Err(stop) => stop.summary(
                what,
                was_live.as_deref(),
                self.layout.live_release()?.as_deref(),
            ),
        };
        if let Err(err) = &appended {
            output::error(format!(
                "{:#}",
                output::with_disk_full_hint(anyhow::anyhow!(
                    "the history could not record this {what}, so the next run will: {err:#}"
                ))
            ));
        }
        // After the lock is let go (when the history took the record): a slow webhook holds
        // up no other deploy. Before the summary, which stays the pusher's last line.
        if let Some(notify) = &config.notify {
            crate::live::notify::send(notify, self.layout.root(), entry, &summary);
        }
        output::say(summary);
        Ok(if appended.is_ok() && entry.state == State::Succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    /// Lets the lock go after an error that came before anything changed, so that no later run
    /// takes this one for a deploy that died.
    fn abandon(self, err: anyhow::Error) -> anyhow::Error {
        if let Err(release) = self.lock.release() {
            output::warn(format!("{release:#}"));
        }
        err
    }

    fn stages(&self) -> String {
        let stages: Vec<String> = self
            .timings
            .iter()
            .map(|(stage, took)| format!("{stage} {}", seconds(*took)))
            .collect();
        stages.join(", ")
    }
}

/// Runs one deploy of `target`. Returns the exit code for the hook: failure when the deploy
/// failed, after saying so.
pub fn deploy(
    repo: &Repository,
    config: &Config,
    target: &Target,
    trigger: Trigger,
    options: &PushOptions,
) -> Result<ExitCode> {
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

    let mut steps = Vec::new();
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
    if outcome.is_ok() {
        outcome = pipeline(repo, config, &mut session, target, trigger, &mut steps);
    }

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
    let mut code = session.finish(config, &entry, "deploy", summary)?;
    // Overtaken, a post-receive push did nothing wrong; in gate mode the push is rejected, so
    // that the branch moves only with what deploys.
    if entry.state == State::Superseded && trigger != Trigger::PreReceive {
        code = ExitCode::SUCCESS;
    }
    if let Some(live) = live_commit {
        spare::after_deploy(config, &layout, repo.path(), &live);
    }
    Ok(code)
}

/// In gate mode, git updates the ref only after the hook succeeds, so a push that waited for
/// the lock may be based on a commit that is no longer the branch's: deploying it would leave
/// the branch and what is live apart. Refuse it instead.
fn check_gate_base(repo: &Repository, records: &[DeployRecord], target: &Target) -> Result<()> {
    // A gate deploy that just finished may still be waiting for git to move the ref.
    if let Some(last) = records.last().filter(|r| {
        r.hook.as_deref() == Some("pre-receive")
            && r.state == State::Succeeded
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

fn pipeline(
    repo: &Repository,
    config: &Config,
    session: &mut Session,
    target: &Target,
    trigger: Trigger,
    steps: &mut Vec<StepRecord>,
) -> Result<(), Stop> {
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
    let tree = repo
        .find_commit(target.commit)
        .and_then(|commit| commit.tree())
        .with_context(|| format!("failed to read the tree of `{commit}`"))?;
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
    release::make_durable(&dir)?;
    session.sync = Some(clock.elapsed());
    session.timings.push(("sync".into(), clock.elapsed()));
    if process::stop_requested() {
        return Err(Stop::Interrupted {
            during: "the switch".into(),
        });
    }

    let mut intent = session.record(Action::Deploy, trigger, &id, target.old);
    intent.steps = steps.clone();
    go_live(config, session, &intent, &env)?;

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
        let (record, exit) = steps::run(step, &layout.current(), &env, width, sandbox.as_ref())?;
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

/// Makes the new release's files: built from an old release when there is one to reuse, else
/// checked out whole.
fn make_release(
    repo: &Repository,
    config: &Config,
    session: &mut Session,
    target: &Target,
) -> Result<()> {
    let layout = session.layout.clone();
    let id = session.id.clone();
    let dir = layout.release(&id);
    let clock = Instant::now();
    // An old release to build from, or before there are any, the spare prepared after the
    // last push (held under its lock until it is this release).
    let base = match prune::recycle_candidate(config, &layout, &session.records)? {
        Some(old) => Some(Base::Old(old)),
        None => spare::take(config, &layout)?.map(|lock| Base::Spare { _lock: lock }),
    };
    let submodules = config.deploy.submodules;
    if submodules {
        crate::release::submodules::attach(
            repo,
            &layout,
            &config.deploy.submodule_urls,
            target.commit,
        )?;
    }
    let trees = release::Trees { repo, submodules };
    // Its index says what it holds; without a readable one, it is not built from.
    let base = base.and_then(|base| {
        match release::readable_index(repo, &layout, base.folder(), submodules) {
            Ok(index) => Some((base, index)),
            Err(err) => {
                output::say(format!(
                    "not building from {}: {err:#}; checking the tree out whole",
                    base.describe()
                ));
                None
            }
        }
    });
    let (base, index) = match base {
        Some((base, index)) => (Some(base), Some(index)),
        None => (None, None),
    };
    match (&base, index) {
        (Some(base), Some(index)) => {
            let links: Vec<_> = config
                .shared
                .paths
                .iter()
                .chain(config.steps.iter().flat_map(|step| &step.outputs))
                .collect();
            let generated: &[&str] = if config.deploy.revision_file {
                &[release::REVISION_FILE]
            } else {
                &[]
            };
            let update = release::update(
                trees,
                &layout,
                base.folder(),
                index,
                &id,
                target.commit,
                &links,
                generated,
            )?;
            let mut note = format!(
                "{} written, {} removed",
                output::count(update.written, "file"),
                update.removed
            );
            if update.repaired > 0 {
                note.push_str(&format!(
                    ", {} changed on disk and rewritten",
                    update.repaired
                ));
            }
            if update.cleaned > 0 {
                note.push_str(&format!(", {} untracked removed", update.cleaned));
            }
            output::say(format!(
                "built from {}: {note} in {}",
                base.describe(),
                seconds(clock.elapsed())
            ));
        }
        _ => {
            let checkout =
                release::materialize(trees, target.commit, &dir, &layout.index_file(&id))?;
            output::say(format!(
                "checked out {} ({}) in {}",
                output::count(checkout.files, "file"),
                output::size(checkout.bytes),
                seconds(clock.elapsed())
            ));
        }
    }
    if config.deploy.revision_file {
        release::write_revision(&dir, target.commit)?;
    }
    session.checkout = Some(clock.elapsed());
    session.timings.push(("checkout".into(), clock.elapsed()));
    session.built_from = base.as_ref().map(Base::recorded);
    Ok(())
}

/// What a new release is built from.
enum Base {
    /// An old release, by id.
    Old(String),
    /// The spare; its lock, held until the release has taken its folder.
    Spare { _lock: spare::SpareLock },
}

impl Base {
    /// Its folder under `releases/`.
    fn folder(&self) -> &str {
        match self {
            Base::Old(id) => id,
            Base::Spare { .. } => spare::SPARE,
        }
    }

    /// As the history records it (`built_from`).
    fn recorded(&self) -> String {
        match self {
            Base::Old(id) => id.clone(),
            Base::Spare { .. } => "spare".to_string(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Base::Old(id) => format!("old release {id}"),
            Base::Spare { .. } => "the spare release".to_string(),
        }
    }
}

/// Switches `current` to the release of `intent`, restarts, checks health; on failure switches
/// back. The intent is in the history before the switch: should the process die after it, the
/// next run knows what to put back (`recover`).
fn go_live(
    config: &Config,
    session: &mut Session,
    intent: &DeployRecord,
    env: &BTreeMap<String, String>,
) -> Result<(), Stop> {
    let layout = session.layout.clone();
    let (release, commit) = (intent.release.as_str(), intent.commit.as_str());
    record::append(
        &layout.deploys_file(),
        &DeployRecord {
            state: State::Switching,
            ..intent.clone()
        },
    )?;
    release::switch_current(&layout, release)?;
    output::say(format!("switched current to {release}"));
    let width = steps::prefix_width(config);
    let no_restart = session.options.no_restart;
    // Without a restart, the old release's processes are meant to stay.
    let old = match (&config.health, &session.previous_release) {
        (Some(_), Some(previous)) if !no_restart => Some(health::OldProcesses::before_restart(
            &layout.release(previous),
        )),
        _ => None,
    };

    if no_restart && !config.restart.is_empty() {
        output::say("restart skipped: the push asked for `ats.no-restart`");
    } else if !config.restart.is_empty() {
        live_stage(config, session, "restart", "restart", |session| {
            let was_live = session.previous_release.as_deref();
            let was_live = was_live.map(|id| layout.release(id));
            restart::run(
                &config.restart,
                &layout,
                &layout.current(),
                was_live.as_deref(),
                env,
                width,
                restart::Mode::Deploy,
            )
            .context("restart failed")
        })?;
    }
    if let Some(check) = &config.health {
        live_stage(config, session, "health check", "health", |session| {
            health::check(
                check,
                commit,
                session.previous_commit.as_deref(),
                &layout.current(),
                env,
                old.as_ref(),
                layout.root(),
            )
        })?;
    }
    Ok(())
}

/// Runs a stage once the release is live, timing it as `timing`; its failure switches back.
fn live_stage(
    config: &Config,
    session: &mut Session,
    stage: &str,
    timing: &str,
    run: impl FnOnce(&Session) -> Result<()>,
) -> Result<(), Stop> {
    let clock = Instant::now();
    let outcome = run(session);
    session.timings.push((timing.to_string(), clock.elapsed()));
    let Err(error) = outcome else { return Ok(()) };
    let interrupted = process::stop_requested();
    output::error(format!("{error:#}"));
    let restored = switch_back(config, session);
    Err(after_switch(stage, error, restored, interrupted))
}

/// What stopped a deploy once live, given how switching back went.
fn after_switch(
    stage: &str,
    error: anyhow::Error,
    restored: Result<()>,
    interrupted: bool,
) -> Stop {
    match restored {
        Err(err) if err.downcast_ref::<KeptLive>().is_some() => Stop::FailedForward {
            stage: stage.to_string(),
            error,
            why: format!("{err:#}"),
        },
        restored => Stop::AfterSwitch {
            stage: stage.to_string(),
            error,
            restored,
            interrupted,
        },
    }
}

/// Why a failed release stays live: going back would put old code on its schema.
#[derive(Debug)]
struct KeptLive(String);

impl std::fmt::Display for KeptLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeptLive {}

/// Before `current` goes from release `from` (schema `from_schema`) back to `to`: when the
/// schemas differ, runs every migrating step's `down` in `from`, and says why not when it
/// cannot (no `down`, or one failed). The `down` runs are returned for the record.
fn reverse_schema(
    config: &Config,
    layout: &Layout,
    (from, from_schema): (&str, Option<&str>),
    (to, to_schema): (&str, Option<&str>),
    env: &BTreeMap<String, String>,
) -> Result<Vec<StepRecord>, String> {
    let (Some(from_schema), Some(to_schema)) = (from_schema, to_schema) else {
        return Ok(Vec::new());
    };
    if from_schema == to_schema {
        return Ok(Vec::new());
    }
    let lacking = crate::steps::schema::lacking(config, &layout.release(from), &layout.release(to));
    let lacking = if lacking.is_empty() {
        String::new()
    } else {
        format!(" ({} lacks {})", to, lacking.join(", "))
    };
    let downs: Vec<&crate::config::Step> = crate::steps::schema::migrating_steps(config)
        .filter(|s| s.down.is_some())
        .collect();
    if downs.is_empty() {
        return Err(format!(
            "release {from} changed the schema ({to_schema} → {from_schema}){lacking}, and no step declares a `down` command to reverse it; old code is never put on a new schema"
        ));
    }
    let mut env = env.clone();
    env.insert("ATS_ROLLBACK_FROM".into(), from.to_string());
    env.insert("ATS_ROLLBACK_TO".into(), to.to_string());
    env.insert(
        "ATS_ROLLBACK_TO_DIR".into(),
        layout.release(to).display().to_string(),
    );
    let width = steps::prefix_width(config);
    let mut records = Vec::new();
    for step in downs {
        let down = crate::config::Step {
            name: step.name.clone(),
            run: step.down.clone().unwrap_or_default(),
            ..(*step).clone()
        };
        output::say(format!(
            "{}: reversing its migrations{lacking} with `down`",
            step.name
        ));
        let sandbox = crate::steps::confine::Sandbox::for_release(config, &layout.release(from))
            .map_err(|err| format!("`down` of step `{}` could not run: {err:#}", step.name))?;
        let (mut record, exit) =
            steps::run(&down, &layout.release(from), &env, width, sandbox.as_ref())
                .map_err(|err| format!("`down` of step `{}` could not run: {err:#}", step.name))?;
        record.name = format!("{} (down)", step.name);
        records.push(record);
        if !exit.success() {
            return Err(format!(
                "`down` of step `{}` failed ({exit}), so the schema is still {from}'s",
                step.name
            ));
        }
    }
    Ok(records)
}

/// After a failure once live: `current` goes back to the release that was live before, which
/// is restarted too.
fn switch_back(config: &Config, session: &mut Session) -> Result<()> {
    let layout = session.layout.clone();
    let layout = &layout;
    let previous = session.previous_release.clone();
    let previous = previous.as_deref();
    let leaving = layout.live_release().ok().flatten();
    // Old code never goes back onto the schema this deploy's migrations made.
    if let (Some(to), Some(from), true) = (previous, leaving.as_deref(), session.migrated) {
        let to_schema = record::live_record(&session.records, to).and_then(|r| r.schema.clone());
        let env = steps::release_environment(
            config,
            layout,
            from,
            &session.holder.commit,
            session.previous_commit.as_deref(),
            &session.holder.git_ref,
        )?;
        match reverse_schema(
            config,
            layout,
            (from, session.schema.as_deref()),
            (to, to_schema.as_deref()),
            &env,
        ) {
            Ok(mut downs) => session.down_steps.append(&mut downs),
            Err(why) => return Err(KeptLive(why).into()),
        }
    }
    release::restore_current(layout, previous)?;
    let Some(previous) = previous else {
        output::say("removed `current`: nothing was live before");
        return Ok(());
    };
    output::say(format!("switched current back to {previous}"));
    recover::restart_put_back(
        config,
        layout,
        &session.records,
        previous,
        leaving.as_deref(),
    )
    .context("restarting the previous release failed")
}

/// Makes an older release live again: the previous good one, or the one named.
pub fn rollback(config: &Config, named: Option<&str>, force: bool) -> Result<ExitCode> {
    let layout = Layout::new(&config.deploy.root);
    layout.refuse_root_on_a_users_root()?;
    let records = record::read_all(&layout.deploys_file())?;
    let target = rollback_target(&layout, &records, named)?;
    let made = record::deploy_of(&records, &target).expect("rollback targets went live");
    let (commit, git_ref) = (made.commit.clone(), made.git_ref.clone());

    let mut session = Session::lock(config, &commit, &git_ref, false)?;
    // Under the lock, the answer may have changed (a deploy that finished while we waited).
    let target = match rollback_target(&session.layout, &session.records, named) {
        Ok(target) => target,
        Err(err) => return Err(session.abandon(err)),
    };
    let made = record::deploy_of(&session.records, &target).expect("rollback targets went live");
    session.subject = made.subject.clone();
    session.schema = made.schema.clone();
    let target_schema = made.schema.clone();
    let (commit, git_ref) = (made.commit.clone(), made.git_ref.clone());
    session.holder.commit = commit.clone();
    session.holder.git_ref = git_ref.clone();
    let id = release::new_rollback_id(&session.layout, &commit, SystemTime::now());
    if let Err(err) = session.start(id) {
        return Err(session.abandon(err));
    }
    let was = session
        .previous_release
        .clone()
        .unwrap_or_else(|| "nothing".into());
    output::say(format!(
        "rolling back from {was} to {target} ({} of {})",
        short(&commit),
        short_ref(&git_ref)
    ));

    let env = match steps::release_environment(
        config,
        &session.layout,
        &target,
        &commit,
        session.previous_commit.as_deref(),
        &git_ref,
    ) {
        Ok(env) => env,
        // Nothing changed: no record, and the lock goes back empty.
        Err(err) => return Err(session.abandon(err)),
    };
    // The schema: the target's code must find the schema its migrations made.
    if let Some(live) = session.previous_release.clone() {
        let live_record = record::live_record(&session.records, &live);
        let live_schema = live_record.and_then(|r| r.schema.clone());
        let differs = matches!((&live_schema, &target_schema), (Some(a), Some(b)) if a != b);
        if differs && force {
            output::warn(format!(
                "--force: {target}'s code goes onto the schema of {live} ({} → {})",
                live_schema.as_deref().unwrap_or_default(),
                target_schema.as_deref().unwrap_or_default()
            ));
        } else if differs {
            let live_env = live_record
                .map(|r| (r.commit.clone(), r.git_ref.clone()))
                .map(|(c, r)| {
                    steps::release_environment(config, &session.layout, &live, &c, None, &r)
                });
            let reversed = match live_env {
                Some(Ok(live_env)) => reverse_schema(
                    config,
                    &session.layout,
                    (&live, live_schema.as_deref()),
                    (&target, target_schema.as_deref()),
                    &live_env,
                ),
                Some(Err(err)) => Err(format!("{err:#}")),
                None => Ok(Vec::new()),
            };
            match reversed {
                Ok(mut downs) => session.down_steps.append(&mut downs),
                Err(why) => {
                    return Err(session.abandon(anyhow::anyhow!(
                        "rollback refused: {why}. Either declare `down` for the migrating step, or, when {target}'s code works on this schema (expand/contract migrations), pass `--force`"
                    )))
                }
            }
        }
    }
    let mut intent = session.record(Action::Rollback, Trigger::Manual, &target, None);
    intent.steps = session.down_steps.clone();
    let outcome = go_live(config, &mut session, &intent, &env);
    let mut entry = session.record(Action::Rollback, Trigger::Manual, &target, None);
    entry.steps = session.down_steps.clone();
    if let Err(stop) = &outcome {
        (entry.state, entry.failed_step, entry.error) = stop.describe();
    }
    let summary = outcome.map(|()| {
        format!(
            "rolled back to {} ({}), release {target}, in {}{}",
            short(&commit),
            short_ref(&git_ref),
            seconds(session.clock.elapsed()),
            if session.timings.is_empty() {
                String::new()
            } else {
                format!(" — {}", session.stages())
            }
        )
    });
    session.finish(config, &entry, "rollback", summary)
}

fn rollback_target(
    layout: &Layout,
    records: &[DeployRecord],
    named: Option<&str>,
) -> Result<String> {
    let mut on_disk = layout.release_ids()?;
    record::sort_chronologically(&mut on_disk, records);
    let live = layout.live_release()?;
    let target = match named {
        Some(id) => {
            if !on_disk.iter().any(|r| r == id) {
                bail!("no release `{id}` on disk (pruned, or never made); `ats-hook releases` lists them");
            }
            if live.as_deref() == Some(id) {
                bail!("`{id}` is already live");
            }
            if !record::went_live(records, id) {
                bail!("`{id}` never went live successfully (its deploy did not succeed); refusing to switch to it");
            }
            id.to_string()
        }
        None => record::rollback_target(records, live.as_deref(), &on_disk).cloned().with_context(|| {
            match &live {
                Some(live) => format!("nothing to roll back to: no release older than `{live}` went live and is still on disk"),
                None => "nothing to roll back to: no release went live yet".to_string(),
            }
        })?,
    };
    // Its dependencies are part of it: a release whose build is gone would not run.
    let store = Store::new(layout);
    for (step, output) in record::outputs_of(records, &target) {
        let dir = store.build_dir(step, &output.build);
        if !dir.is_dir() {
            bail!(
                "`{target}` runs on the build `{}` of step `{step}`, which is gone; refusing to switch to it",
                dir.display()
            );
        }
    }
    Ok(target)
}

/// `deploy --dry-run`: what a deploy of `target` would do, changing nothing.
pub fn plan(
    repo: &Repository,
    config: &Config,
    target: &Target,
    options: &PushOptions,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let layout = Layout::new(&config.deploy.root);
    let live = layout.live_release()?;
    let id = release::new_id(&layout, target.commit, SystemTime::now());
    writeln!(
        out,
        "would deploy {} ({}) as {}",
        short(&target.commit.to_string()),
        short_ref(&target.git_ref),
        layout.release(&id).display()
    )?;
    writeln!(out, "live now:  {}", live.as_deref().unwrap_or("nothing"))?;
    if let Some(lock) = lock::current_holder(&layout.lock_file())? {
        writeln!(out, "lock:      held by {lock}; the deploy would wait")?;
    }
    crate::pipeline::plan::write_plan(config, out)?;
    crate::pipeline::plan::write_outputs_plan(config, repo, target.commit, &target.git_ref, out)?;
    for step in &options.skip {
        writeln!(out, "skipped:   step {step}, as asked")?;
    }
    if options.no_restart {
        writeln!(out, "restart:   skipped, as asked")?;
    }
    if let Some(note) = &options.note {
        writeln!(out, "note:      {note}")?;
    }
    Ok(())
}
