//! What a deploy that died (SIGKILL, the OOM killer, a power loss) left behind, found by the
//! next run when it takes the lock from a holder that is gone.
//!
//! A deploy that died before its switch left the live release as it was: it is recorded as
//! interrupted. One that died after it (during the restart, the health check, the prune)
//! left `current` on a release nobody vouched for: restarted or not, healthy or not. Its
//! record of the switch, written just before it, says where `current` was; the next run puts
//! it back there and restarts that release, then records the deploy as interrupted. Undoing
//! rather than finishing is what keeps gate mode's promise (the branch did not move, so the
//! live release must not either) and what a health check that never ran would demand. The
//! commit is deployed again by the next push, or by `ats-hook deploy`.

use std::time::SystemTime;

use anyhow::Result;

use crate::config::Config;
use crate::live::slots::Slots;
use crate::live::{handover, proxy, restart};
use crate::state::layout::Layout;
use crate::state::lock::Holder;
use crate::state::record::{self, Action, DeployRecord, State};
use crate::sys::output;
use crate::sys::output::rfc3339;
use crate::{release, steps};

/// Stops what is left of the child the dead deploy was running (a step that went on writing into
/// its release), which the group file names. Only processes of that group whose working folder
/// is inside the deploy root are stopped, so a group id the system has given to something
/// else since is left alone.
pub fn stop_orphans(layout: &Layout) {
    let file = layout.group_file();
    let Some(pgid) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|pgid| *pgid > 1)
    else {
        return;
    };
    let root = layout
        .root()
        .canonicalize()
        .unwrap_or_else(|_| layout.root().to_path_buf());
    let mut stopped = Vec::new();
    for pid in crate::sys::procs::group_members(pgid) {
        let inside =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&root));
        if inside {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            stopped.push(pid.to_string());
        }
    }
    if !stopped.is_empty() {
        output::warn(format!(
            "stopped what the previous deploy left running (pid {}), before it could write into a release",
            stopped.join(", ")
        ));
    }
}

/// Records the deploy `dead` was running, and undoes its switch if it died after it.
pub fn after_death(
    config: &Config,
    layout: &Layout,
    records: &[DeployRecord],
    dead: &Holder,
) -> Result<()> {
    // It ended, but the history could not take its record: append it now, as it was.
    if let Some(record) = dead
        .unrecorded
        .as_deref()
        .and_then(|text| serde_json::from_str::<DeployRecord>(text).ok())
    {
        output::warn(format!(
            "the previous {}, {dead}, ended ({}) but the history could not record it then; recording it now",
            if record.action == Action::Rollback { "rollback" } else { "deploy" },
            record.state.as_str()
        ));
        return record::append(&layout.deploys_file(), &record);
    }
    let last_word = records.iter().rev().find(|r| r.id == dead.release);
    if let Some(done) = last_word.filter(|r| r.state != State::Switching) {
        // It recorded how it ended, then died before letting go of the lock (while pruning):
        // its record stands, and this run prunes again.
        output::warn(format!(
            "the previous deploy, {dead}, recorded that it {} but died before it was done pruning",
            done.state.as_str()
        ));
        return Ok(());
    }
    // A switch that a run before it left: that run died, and so did the one that was undoing
    // it (this dead one, before it had recorded anything of its own).
    if let Some(pending) = records
        .last()
        .filter(|r| r.state == State::Switching && r.id != dead.release)
    {
        output::warn(format!(
            "{} died after its switch, and the run that was undoing it died too; undoing it now",
            pending.id
        ));
        undo_switch(config, layout, records, pending, dead)?;
    }
    if last_word.is_none() && dead.commit.is_empty() {
        // A `start` after a boot: it deploys nothing, and the one that takes over starts again.
        output::warn(format!(
            "the previous `start`, {dead}, died before it was done"
        ));
        return Ok(());
    }
    let Some(intent) = last_word else {
        output::warn(format!(
            "the previous deploy, {dead}, did not finish (its process died); recording it as interrupted"
        ));
        return record::append(&layout.deploys_file(), &interrupted(dead));
    };
    undo_switch(config, layout, records, intent, dead)
}

/// Undoes the switch of `intent`, a deploy or rollback that died after its record of the
/// switch, and records it as interrupted.
fn undo_switch(
    config: &Config,
    layout: &Layout,
    records: &[DeployRecord],
    intent: &DeployRecord,
    dead: &Holder,
) -> Result<()> {
    if let (Some(slot), Some(serve), Some(health)) = (&intent.slot, &config.serve, &config.health) {
        let error = undo_handover(config, (serve, health), layout, records, intent, slot, dead);
        return record_interrupted(layout, intent, error);
    }
    let live = layout.live_release()?;
    let error = if live.as_deref() == Some(intent.release.as_str()) {
        let back = intent.previous_release.as_deref();
        output::warn(format!(
            "the previous deploy, {dead}, died after switching `current` to {}; switching back to {}",
            intent.release,
            back.unwrap_or("nothing")
        ));
        release::restore_current(layout, back)?;
        if let Some(back) = back {
            // Said, not fatal: the run that recovers goes on to deploy.
            if let Err(err) = restart_put_back(config, layout, records, back, Some(&intent.release))
            {
                output::warn(format!("restarting {back} failed: {err:#}"));
            }
        }
        format!(
            "ats-hook (pid {}) died after the switch; the next run switched `current` back to {}",
            dead.pid,
            back.unwrap_or("nothing")
        )
    } else {
        output::warn(format!(
            "the previous deploy, {dead}, died after switching back; recording it as interrupted"
        ));
        format!("ats-hook (pid {}) died after the switch", dead.pid)
    };
    record_interrupted(layout, intent, error)
}

/// The final record of a switch a killed run left: interrupted, and why.
fn record_interrupted(layout: &Layout, intent: &DeployRecord, error: String) -> Result<()> {
    record::append(
        &layout.deploys_file(),
        &DeployRecord {
            state: State::Interrupted,
            error: Some(error),
            finished_at: rfc3339(SystemTime::now()),
            ..intent.clone()
        },
    )
}

/// Undoes the handover of a run that died: the proxy goes back to the slot that runs the
/// release that was live (started again if it stopped), `current` back to that release, and
/// the new slot stops. Returns what the record says happened.
fn undo_handover(
    config: &Config,
    (serve, health): (&crate::config::Serve, &crate::config::Health),
    layout: &Layout,
    records: &[DeployRecord],
    intent: &DeployRecord,
    slot: &str,
    dead: &Holder,
) -> String {
    let slots = Slots::new(serve, layout);
    let Some(new) = slots.named(slot) else {
        return format!(
            "ats-hook (pid {}) died during a handover to an unknown slot `{slot}`",
            dead.pid
        );
    };
    let old = slots.other(&new);
    let previous = intent.previous_release.as_deref();
    let told = slots.live().as_ref() == Some(&new);
    let outcome = (|| -> Result<String> {
        if !told {
            output::warn(format!(
                "the previous deploy, {dead}, died before the proxy was switched to slot {}; stopping that slot",
                new.name
            ));
            slots.stop(&new)?;
            return Ok(format!(
                "ats-hook (pid {}) died before the switch; its slot {} was stopped",
                dead.pid, new.name
            ));
        }
        let old_runs_previous = slots.alive(&old).is_ok()
            && slots.running(&old).map(|r| r.release).as_deref() == previous;
        output::warn(format!(
            "the previous deploy, {dead}, died after pointing the proxy at slot {}; putting {} back",
            new.name,
            previous.unwrap_or("nothing")
        ));
        match previous {
            Some(previous) if old_runs_previous => {
                slots.set_live(&old)?;
                proxy::switch(&serve.proxy, &old, None, &std::collections::BTreeMap::new())?;
                release::restore_current(layout, Some(previous))?;
                slots.stop(&new)?;
            }
            Some(previous) => {
                handover::hand_back(config, (serve, health), layout, records, previous)?
            }
            None => {
                slots.stop(&new)?;
                release::restore_current(layout, None)?;
            }
        }
        Ok(format!(
            "ats-hook (pid {}) died after the switch; the next run put {} back on slot {}",
            dead.pid,
            previous.unwrap_or("nothing"),
            old.name
        ))
    })();
    outcome.unwrap_or_else(|err| {
        output::warn(format!("undoing the handover failed: {err:#}"));
        format!(
            "ats-hook (pid {}) died during the handover, and undoing it failed: {err:#}",
            dead.pid
        )
    })
}

/// Restarts `back`, the release `current` was put back on after `left`, with the environment
/// of the deploy that made it. It runs to its end whatever stop ats-hook was asked for: the
/// stop may be why `current` is back.
pub fn restart_put_back(
    config: &Config,
    layout: &Layout,
    records: &[DeployRecord],
    back: &str,
    left: Option<&str>,
) -> Result<()> {
    if config.restart.is_empty() && config.compose.is_none() {
        return Ok(());
    }
    let (_, env) = steps::live_release_environment(config, layout, records, back)?;
    if let Some(compose) = &config.compose {
        crate::live::compose::Project::new(compose, layout).up(
            &env,
            &[],
            crate::live::compose::Up::Update,
        )?;
    }
    restart::run(
        &config.restart,
        layout,
        &layout.current(),
        left.map(|id| layout.release(id)).as_deref(),
        &env,
        steps::prefix_width(config),
        restart::Mode::Back,
    )
}

/// The record of a deploy that died before its switch.
fn interrupted(dead: &Holder) -> DeployRecord {
    let release = if dead.release.is_empty() {
        "unknown".to_string()
    } else {
        dead.release.clone()
    };
    DeployRecord {
        id: release.clone(),
        action: Action::Deploy,
        hook: None,
        git_ref: dead.git_ref.clone(),
        old_commit: None,
        commit: dead.commit.clone(),
        subject: None,
        schema: None,
        release,
        previous_release: None,
        slot: None,
        built_from: None,
        checkout_ms: None,
        sync_ms: None,
        note: None,
        no_restart: false,
        state: State::Interrupted,
        failed_step: None,
        error: Some(format!(
            "ats-hook (pid {}) died before the deploy finished",
            dead.pid
        )),
        steps: Vec::new(),
        pusher: dead.pusher.clone(),
        started_at: dead.since.clone(),
        finished_at: rfc3339(SystemTime::now()),
        duration_ms: 0,
    }
}
