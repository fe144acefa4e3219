//! The moves of a handover, which a deploy, a rollback and the recovery of a killed run make
//! alike: start a release on a slot and prove it there, point the proxy and `current` at it,
//! retire the slot it replaces. The order of a deploy is the pipeline's (`pipeline::handover`).

use std::collections::BTreeMap;

use anyhow::Result;

use super::health::{self, Target};
use super::proxy;
use super::slots::{Slot, Slots};
use crate::config::{Config, Health, Serve};
use crate::release;
use crate::state::layout::Layout;
use crate::state::record::DeployRecord;
use crate::steps;
use crate::sys::output;

/// Starts `release` on `slot` and probes it there until healthy.
pub fn start_and_prove(
    slots: &Slots<'_>,
    health: &Health,
    slot: &Slot,
    (release, commit): (&str, &str),
    previous_commit: Option<&str>,
    layout: &Layout,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    let dir = layout.release(release);
    slots.start(slot, (release, commit), &dir, env)?;
    let mut env = env.clone();
    env.extend(Slots::variables(slot));
    let alive = || slots.alive(slot);
    let target = Target {
        url: health
            .url
            .as_ref()
            .map(|url| crate::live::slots::expand(url, slot, &dir)),
        alive: Some(&alive),
        label: Some(format!("health of slot {}", slot.name)),
    };
    health::check(
        health,
        &target,
        commit,
        previous_commit,
        &dir,
        &env,
        None,
        layout.root(),
    )
}

/// Points the proxy at `slot`, then `current` at its release; noted first, so that a run
/// killed in between knows the proxy may point there. `fallback`, the slot that served until
/// now, stays the proxy's backup until it is retired: a request the new server refuses (it
/// crashed right after its probes) goes there instead of failing.
pub fn switch_to(
    slots: &Slots<'_>,
    (slot, fallback): (&Slot, Option<&Slot>),
    release: &str,
    layout: &Layout,
    env: &BTreeMap<String, String>,
) -> Result<(), SwitchError> {
    let was = slots.live();
    slots.set_live(slot).map_err(SwitchError::Failed)?;
    if let Err(err) = proxy::switch(&slots.serve.proxy, slot, fallback, env) {
        // nginx with a file it refused or could not reload has it put back; Caddy takes a
        // change whole or not at all. A command may have done half: that is not known.
        let proxy = &slots.serve.proxy;
        if proxy.nginx.is_none() && proxy.caddy.is_none() {
            return Err(SwitchError::Failed(err));
        }
        let noted = match &was {
            Some(was) => slots.set_live(was),
            None => slots.clear_live(),
        };
        if let Err(noted) = noted {
            output::warn(format!("{noted:#}"));
        }
        return Err(SwitchError::Refused(err));
    }
    release::switch_current(layout, release).map_err(SwitchError::Failed)?;
    output::say(format!("switched current to {release}"));
    Ok(())
}

/// Why a switch did not happen.
#[derive(Debug)]
pub enum SwitchError {
    /// The proxy kept what it had: no request of a user reached the new slot.
    Refused(anyhow::Error),
    /// It may have switched, in part or whole.
    Failed(anyhow::Error),
}

impl From<SwitchError> for anyhow::Error {
    fn from(err: SwitchError) -> anyhow::Error {
        match err {
            SwitchError::Refused(err) | SwitchError::Failed(err) => err,
        }
    }
}

/// The old slot, once the proxy sends it nothing new: its requests in flight finish (up to
/// `drain`), then it stops. Only then may its release be pruned or recycled.
pub fn retire(slots: &Slots<'_>, old: &Slot, live: &Slot) {
    let left = slots.drain(old);
    // No longer the backup: the next release starts on it before it is proven.
    if let Err(err) = proxy::drop_backup(&slots.serve.proxy, live) {
        output::warn(format!(
            "the proxy still names slot {} as its backup: {err:#}",
            old.name
        ));
    }
    if left > 0 {
        output::warn(format!(
            "slot {} still had {} open after `serve.drain` ({}); stopping it",
            old.name,
            output::count(left, "connection"),
            slots.serve.drain
        ));
    }
    if let Err(err) = slots.stop(old) {
        output::warn(format!("stopping slot {} failed: {err:#}", old.name));
    }
}

/// Puts `previous` back on the slot that takes no traffic (the old one having stopped):
/// started, proven, switched to; the slot it leaves is retired.
pub fn hand_back(
    config: &Config,
    (serve, health): (&Serve, &Health),
    layout: &Layout,
    records: &[DeployRecord],
    previous: &str,
) -> Result<()> {
    let slots = Slots::new(serve, layout);
    let leaving = slots.live();
    let to = slots.idle();
    let (commit, env) = steps::live_release_environment(config, layout, records, previous)?;
    output::say(format!("slot {}: starting {previous} again", to.name));
    if let Err(err) = start_and_prove(&slots, health, &to, (previous, &commit), None, layout, &env)
    {
        let _ = slots.stop(&to);
        return Err(err);
    }
    let fallback = leaving.as_ref().filter(|slot| slots.alive(slot).is_ok());
    switch_to(&slots, (&to, fallback), previous, layout, &env)?;
    if let Some(leaving) = leaving {
        retire(&slots, &leaving, &to);
    }
    super::workers::Workers::new(serve, layout).restart_all(
        previous,
        &layout.release(previous),
        &env,
    );
    Ok(())
}
