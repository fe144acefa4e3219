//! Going live by handover (`[serve]`): the release starts on the slot that takes no traffic,
//! is proven there, and only then does the proxy send users to it; the old slot drains and
//! stops. A release that fails on its slot costs nothing: the proxy and `current` never moved.
//!
//! ```text
//! record the intent (slot b) ─▶ start b ─▶ probe b directly ─▶ note b live ─▶ proxy → b
//!   ─▶ current → release ─▶ probe through the proxy ─▶ drain a ─▶ stop a ─▶ restart workers
//!      └─ b fails: stop b                └─ the proxy probe fails: proxy → a, current back, stop b
//! ```
//!
//! Each move is written down before it is made (the intent record, the slot's file, the live
//! slot), so that `recover` can put the proxy back on a slot that runs a recorded release after
//! a kill at any instant.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};

use super::back::{after_switch, reverse_schema};
use super::session::Session;
use crate::config::{Config, Health, Serve};
use crate::live::handover::{retire, start_and_prove, switch_to, SwitchError};
use crate::live::health::{self, Target};
use crate::live::proxy;
use crate::live::restart;
use crate::live::slots::{Slot, Slots};
use crate::live::workers::Workers;
use crate::release;
use crate::state::record::{self, DeployRecord, State};
use crate::steps;
use crate::sys::output;
use crate::sys::process;

use super::stop::Stop;

/// Hands the traffic over to the release of `intent`.
pub(super) fn handover(
    config: &Config,
    serve: &Serve,
    health: &Health,
    session: &mut Session,
    intent: &DeployRecord,
    env: &BTreeMap<String, String>,
) -> Result<(), Stop> {
    let layout = session.layout.clone();
    let slots = Slots::new(serve, &layout);
    let (release, commit) = (intent.release.as_str(), intent.commit.as_str());
    let new = slots.idle();
    session.slot = Some(new.name.to_string());
    // The slot users are on, if its server still runs: the one to fall back on.
    let old = slots.live().filter(|slot| match slots.alive(slot) {
        Ok(()) => true,
        Err(why) => {
            output::warn(format!(
                "slot {} was live but {why}: there is no running release to fall back on",
                slot.name
            ));
            false
        }
    });
    record::append(
        &layout.deploys_file(),
        &DeployRecord {
            state: State::Switching,
            slot: Some(new.name.to_string()),
            ..intent.clone()
        },
    )?;

    let clock = Instant::now();
    let proven = start_and_prove(
        &slots,
        health,
        &new,
        (release, commit),
        session.previous_commit.as_deref(),
        &layout,
        env,
    );
    session.timings.push(("start".into(), clock.elapsed()));
    if let Err(error) = proven {
        output::error(format!("{error:#}"));
        unproven(config, session, &slots, &new, release, env);
        return Err(Stop::Unproven {
            stage: format!("the health check of slot {}", new.name),
            error,
        });
    }

    let clock = Instant::now();
    let before = proxy::capture(&serve.proxy);
    let switched = match switch_to(&slots, (&new, old.as_ref()), release, &layout, env) {
        Err(SwitchError::Refused(error)) => {
            session.timings.push(("switch".into(), clock.elapsed()));
            output::error(format!("{error:#}"));
            if let Err(err) = slots.stop(&new) {
                output::warn(format!("stopping slot {} failed: {err:#}", new.name));
            }
            return Err(Stop::Unproven {
                stage: "the switch of the proxy".into(),
                error,
            });
        }
        Err(SwitchError::Failed(error)) => Err(error),
        Ok(()) => Ok(()),
    };
    let switched = switched.and_then(|()| {
        let alive = || slots.alive(&new);
        let target = Target {
            url: Some(serve.proxy.url.clone()),
            alive: Some(&alive),
            label: Some("proxy".into()),
        };
        health::check(
            health,
            &target,
            commit,
            session.previous_commit.as_deref(),
            &layout.release(release),
            env,
            None,
            layout.root(),
        )
        .context("the new release does not answer through the proxy")
    });
    session.timings.push(("switch".into(), clock.elapsed()));
    if let Err(error) = switched {
        output::error(format!("{error:#}"));
        let interrupted = process::stop_requested();
        let restored = switch_back(session, &slots, old.as_ref(), &new, before);
        return Err(after_switch("the switch", error, restored, interrupted));
    }

    let clock = Instant::now();
    match &old {
        Some(old) => retire(&slots, old, &new),
        None => {
            let stale = slots.other(&new);
            let _ = slots.stop(&stale);
            if session.previous_release.is_some() {
                output::say(format!(
                    "no slot ran the previous release: a server that served it outside the slots (the restart model) still runs; stop it once the proxy no longer sends to it (`{}`)",
                    stale.addr
                ));
            }
        }
    }
    session.timings.push(("drain".into(), clock.elapsed()));

    // Workers and schedulers serve no HTTP: they restart once the web release is live.
    if !serve.workers.is_empty() || serve.compose.is_some() {
        let clock = Instant::now();
        Workers::new(serve, &layout).restart_all(release, &layout.release(release), env);
        session.timings.push(("workers".into(), clock.elapsed()));
    }
    if !config.restart.is_empty() && !session.options.no_restart {
        let clock = Instant::now();
        if let Err(err) = restart::run(
            &config.restart,
            &layout,
            &layout.current(),
            None,
            env,
            steps::prefix_width(config),
            restart::Mode::Deploy,
        ) {
            output::warn(format!(
                "restarting the workers failed: {err:#}; {release} serves the site"
            ));
        }
        session.timings.push(("restart".into(), clock.elapsed()));
    }
    Ok(())
}

/// After the new release failed on its slot: stop it, and put the schema back when its
/// migrations changed it (the old release has run on it since they ran).
fn unproven(
    config: &Config,
    session: &mut Session,
    slots: &Slots<'_>,
    new: &Slot,
    release: &str,
    env: &BTreeMap<String, String>,
) {
    for line in slots.last_output(new, 10) {
        output::say(format!("slot {} | {line}", new.name));
    }
    if let Err(err) = slots.stop(new) {
        output::warn(format!("stopping slot {} failed: {err:#}", new.name));
    }
    let layout = session.layout.clone();
    if let (Some(to), true) = (session.previous_release.clone(), session.migrated) {
        let to_schema = record::live_record(&session.records, &to).and_then(|r| r.schema.clone());
        match reverse_schema(
            config,
            &layout,
            (release, session.schema.as_deref()),
            (&to, to_schema.as_deref()),
            env,
        ) {
            Ok(mut downs) => session.down_steps.append(&mut downs),
            Err(why) => output::warn(format!("{to} runs on the new schema: {why}")),
        }
    }
}

/// After the switch failed: the proxy goes back to the old slot (still running), `current`
/// back to its release, and the new slot stops.
fn switch_back(
    session: &Session,
    slots: &Slots<'_>,
    old: Option<&Slot>,
    new: &Slot,
    before: Option<Vec<u8>>,
) -> Result<()> {
    let layout = &session.layout;
    let outcome = match old {
        Some(old) => slots
            .set_live(old)
            .and_then(|()| proxy::switch(&slots.serve.proxy, old, None, &BTreeMap::new()))
            .map(|()| output::say(format!("proxy: back on slot {}", old.name))),
        None => proxy::restore(&slots.serve.proxy, before),
    };
    release::restore_current(layout, session.previous_release.as_deref())?;
    if let Some(previous) = &session.previous_release {
        output::say(format!("switched current back to {previous}"));
    }
    // Whether or not the proxy went back, the new slot is no one's: it stops.
    let stopped = slots.stop(new);
    outcome?;
    stopped
}
