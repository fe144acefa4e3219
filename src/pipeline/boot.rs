//! `ats-hook start`: what is live, running again after a boot. With the handover, the app's
//! servers are ats-hook's to start: after a reboot the live slot's release and the workers run
//! nowhere until this runs (from `contrib/systemd/ats-hook-start.service`, at boot). It takes the
//! deploy lock like a deploy (so it never races one, and finishes or undoes the handover of a
//! deploy that the reboot cut short), starts the release `current` names on the live slot and
//! proves it there (nginx, after its own boot, already sends to that slot), stops what the other
//! slot's record says it ran, and starts the workers that do not run. What already runs is left
//! alone: a second `start` changes nothing.

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::session::Session;
use crate::config::Config;
use crate::live::handover::start_and_prove;
use crate::live::slots::Slots;
use crate::live::workers::Workers;
use crate::steps;
use crate::sys::output;

pub fn start(config: &Config) -> Result<ExitCode> {
    let (Some(serve), Some(health)) = (&config.serve, &config.health) else {
        bail!(
            "`start` is for the handover (`[serve]`): in the restart model the app's own unit starts it at boot"
        );
    };
    let session = Session::lock(config, "", "", false)?;
    let outcome = (|| -> Result<()> {
        let layout = session.layout.clone();
        let slots = Slots::new(serve, &layout);
        let (Some(live), Some(release)) = (slots.live(), session.previous_release.clone()) else {
            output::say("nothing is live yet: the first deploy starts slot a");
            return Ok(());
        };
        let (commit, env) =
            steps::live_release_environment(config, &layout, &session.records, &release)?;
        let runs = slots.running(&live).map(|r| r.release);
        if slots.alive(&live).is_ok() && runs.as_deref() == Some(release.as_str()) {
            output::say(format!("slot {} runs {release} already", live.name));
        } else {
            start_and_prove(
                &slots,
                health,
                &live,
                (&release, &commit),
                None,
                &layout,
                &env,
            )?;
            output::say(format!("slot {}: {release} serves again", live.name));
        }
        // What the other slot's record says it ran died with the machine, or is no one's.
        slots.stop(&slots.other(&live))?;
        Workers::new(serve, &layout).start_missing(&release, &layout.release(&release), &env);
        Ok(())
    })();
    session.release_lock();
    outcome?;
    Ok(ExitCode::SUCCESS)
}
