//! The session around a deploy or rollback: the deploy lock, the run's id and log, the
//! history it reads and the record it writes, the timings the summary prints.

use crate::config::Config;
use crate::pipeline::prune;
use crate::pipeline::recover;
use crate::pipeline::stop::Stop;
use crate::state::layout::Layout;
use crate::state::lock::{self, DeployLock, Holder};
use crate::state::push_options::PushOptions;
use crate::state::record::{self, Action, DeployRecord, State, StepRecord};
use crate::sys::output::{self, rfc3339, seconds, short};
use crate::sys::process;
use anyhow::{Context, Result};
use git2::Oid;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// What started a deploy; recorded, and gate mode checks the pushed base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    PostReceive,
    /// Gate mode: the push is accepted only if the deploy succeeds.
    PreReceive,
    Manual,
}

impl Trigger {
    pub(super) fn hook_name(self) -> Option<String> {
        match self {
            Trigger::PostReceive => Some("post-receive".into()),
            Trigger::PreReceive => Some("pre-receive".into()),
            Trigger::Manual => None,
        }
    }
}

/// One run under the deploy lock: its id, log, history and timings.
pub(super) struct Session {
    pub(super) layout: Layout,
    pub(super) lock: DeployLock,
    pub(super) holder: Holder,
    pub(super) id: String,
    pub(super) started: SystemTime,
    pub(super) clock: Instant,
    pub(super) records: Vec<DeployRecord>,
    /// What was live when the lock was taken.
    pub(super) previous_release: Option<String>,
    pub(super) previous_commit: Option<String>,
    pub(super) timings: Vec<(String, Duration)>,
    /// The old release the new one was built from, and how long making its files took.
    pub(super) built_from: Option<String>,
    pub(super) checkout: Option<Duration>,
    /// How long making the release durable took.
    pub(super) sync: Option<Duration>,
    /// Every path written into the release since it was last durable, while that is known
    /// (nothing but ats-hook wrote there).
    pub(super) written: Option<crate::release::durable::Written>,
    /// How much step output the run's log keeps.
    pub(super) log_limit: u64,
    /// What the push asked for (`git push -o ats.…`).
    pub(super) options: PushOptions,
    /// The subject line of the commit going live.
    pub(super) subject: Option<String>,
    /// Its schema fingerprint (`step.migrations`), and whether a migrating step ran.
    pub(super) schema: Option<String>,
    pub(super) migrated: bool,
    /// With `[serve]`: the slot the release was started on.
    pub(super) slot: Option<String>,
    /// `down` commands run on the way back, recorded with the steps.
    pub(super) down_steps: Vec<StepRecord>,
    /// The switch lock, held from the switch to the end of the run: no scheduled job starts
    /// while the release goes live (`live::jobs::run`).
    pub(super) switching: Option<nix::fcntl::Flock<std::fs::File>>,
    /// With several apps to a push: this one's name, and its voice while others speak.
    pub(super) app: Option<String>,
    pub(super) _output: Option<output::DeployGuard>,
}

impl Session {
    /// Takes the deploy lock (waiting, and saying for whom), and records a deploy that died
    /// holding it.
    pub(super) fn lock(
        config: &Config,
        commit: &str,
        git_ref: &str,
        announce: bool,
    ) -> Result<Session> {
        let _voice = output::speaking_for(config.app.as_deref());
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
            pusher: record::pusher(),
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
            // The jobs of what is live again: the dead run may have installed its own.
            if let Err(err) = crate::live::jobs::install_live(config, &layout) {
                output::warn(format!("scheduled jobs: {err:#}"));
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
            written: None,
            log_limit: config.deploy.log_limit.0,
            options: PushOptions::default(),
            subject: None,
            schema: None,
            migrated: false,
            slot: None,
            down_steps: Vec::new(),
            switching: None,
            app: config.app.clone(),
            _output: None,
        })
    }

    /// Names the run, opens its log, and tags every line after this with it.
    pub(super) fn start(&mut self, id: String) -> Result<()> {
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
            output::Deploying {
                id: &id,
                commit: &self.holder.commit,
                git_ref: &self.holder.git_ref,
                app: self.app.as_deref(),
            },
            Some(log),
            self.log_limit,
        ));
        self.id = id;
        Ok(())
    }

    /// Lets another app of the same push speak.
    pub(super) fn hush(&mut self) {
        if let Some(voice) = &mut self._output {
            voice.pause();
        }
    }

    /// Speaks for this app again; its children's process groups are noted in its root.
    pub(super) fn speak(&mut self) {
        if let Some(voice) = &mut self._output {
            voice.resume();
        }
        process::record_groups_in(Some(self.layout.group_file()));
    }

    /// What was live before, as a summary names it.
    pub(super) fn was_live(&self) -> Option<String> {
        self.previous_commit
            .as_deref()
            .map(|c| short(c).to_string())
            .or(self.previous_release.clone())
    }

    pub(super) fn record(
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
            slot: self.slot.clone(),
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
    pub(super) fn finish(
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
    pub(super) fn abandon(self, err: anyhow::Error) -> anyhow::Error {
        if let Err(release) = self.lock.release() {
            output::warn(format!("{release:#}"));
        }
        err
    }

    /// Lets the lock go after a run that records nothing (`start`).
    pub(super) fn release_lock(self) {
        if let Err(release) = self.lock.release() {
            output::warn(format!("{release:#}"));
        }
    }

    pub(super) fn stages(&self) -> String {
        let stages: Vec<String> = self
            .timings
            .iter()
            .map(|(stage, took)| format!("{stage} {}", seconds(*took)))
            .collect();
        stages.join(", ")
    }
}
