//! `ats-hook rollback`: an older release made live again, through the same session and the
//! same going live as a deploy.

use super::back::reverse_schema;
use super::go_live::go_live;
use super::session::{Session, Trigger};
use crate::config::Config;
use crate::outputs::Store;
use crate::release::{self};
use crate::state::layout::Layout;
use crate::state::record::{self, Action, DeployRecord};
use crate::state::refs::short_ref;
use crate::steps;
use crate::sys::output::{self, seconds, short};
use anyhow::{bail, Context, Result};
use std::process::ExitCode;
use std::time::SystemTime;

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
