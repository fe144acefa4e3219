//! Going live: with `[serve]`, by handover (`handover`); else the older model, the switch of
//! `current`, the restart and the health check after it, and on a failure the switch back,
//! which reverses the schema first when the release migrated it.

use super::back::{after_switch, reverse_schema, KeptLive};
use super::session::Session;
use crate::config::Config;
use crate::live::{health, restart};
use crate::pipeline::recover;
use crate::pipeline::stop::Stop;
use crate::release::{self};
use crate::state::record::{self, DeployRecord, State};
use crate::steps;
use crate::sys::output::{self};
use crate::sys::process;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::Instant;

/// Switches `current` to the release of `intent`, restarts, checks health; on failure switches
/// back. The intent is in the history before the switch: should the process die after it, the
/// next run knows what to put back (`recover`).
pub(super) fn go_live(
    config: &Config,
    session: &mut Session,
    intent: &DeployRecord,
    env: &BTreeMap<String, String>,
) -> Result<(), Stop> {
    // A job starting now waits for the end of this run; one that is finding the live release
    // is waited for, an instant.
    let layout = session.layout.clone();
    session.switching = crate::state::lock::flock(
        &layout.switch_lock(),
        true,
        std::time::Duration::from_secs(60),
    )?;
    if let (Some(serve), Some(health)) = (&config.serve, &config.health) {
        super::handover::handover(config, serve, health, session, intent, env)?;
    } else {
        in_place(config, session, intent, env)?;
    }
    // The release's scheduled jobs become the installed ones; failing that, the old ones are
    // put back with the old release.
    if !crate::live::jobs::concerned(config, &layout, &intent.release) {
        return Ok(());
    }
    live_stage(config, session, "jobs", "jobs", |session| {
        crate::live::jobs::install(config, &session.layout, Some(&intent.release))
            .context("installing the scheduled jobs failed")
    })
}

/// The older model: switch `current`, restart, check health.
fn in_place(
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

    if let Some(compose) = &config.compose {
        // Without `[serve]`, every service is recreated in place: a short outage, which
        // `check` names; the handover has none.
        live_stage(config, session, "compose up", "up", |_| {
            crate::live::compose::Project::new(compose, &layout).up(
                env,
                &[],
                crate::live::compose::Up::Update,
            )
        })?;
    }
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
                &health::Target::default(),
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
pub(super) fn live_stage(
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

/// After a failure once live: `current` goes back to the release that was live before, which
/// is restarted too, and its scheduled jobs are installed again.
pub(super) fn switch_back(config: &Config, session: &mut Session) -> Result<()> {
    let back = switch_back_release(config, session);
    if let Err(err) = crate::live::jobs::install_live(config, &session.layout) {
        output::warn(format!(
            "scheduled jobs: {err:#}; `ats-hook jobs` shows what is installed"
        ));
    }
    back
}

fn switch_back_release(config: &Config, session: &mut Session) -> Result<()> {
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
    if let (Some(serve), Some(health), Some(previous)) = (&config.serve, &config.health, previous) {
        return crate::live::handover::hand_back(
            config,
            (serve, health),
            layout,
            &session.records,
            previous,
        )
        .with_context(|| format!("putting {previous} back on a slot failed"));
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
