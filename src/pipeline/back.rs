//! Going back: what a failure once live is told (switched back, or kept live when old code
//! cannot run on the schema), and the reversal of a release's migrations before old code goes
//! back on the database. Shared by the restart model (`go_live`), the handover (`handover`) and
//! `rollback`.

use super::stop::Stop;
use crate::config::Config;
use crate::state::layout::Layout;
use crate::state::record::StepRecord;
use crate::steps;
use crate::sys::output;
use anyhow::Result;
use std::collections::BTreeMap;

/// What stopped a deploy once live, given how switching back went.
pub(super) fn after_switch(
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
pub(super) struct KeptLive(pub(super) String);

impl std::fmt::Display for KeptLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeptLive {}

/// Before `current` goes from release `from` (schema `from_schema`) back to `to`: when the
/// schemas differ, runs every migrating step's `down` in `from`, and says why not when it
/// cannot (no `down`, or one failed). The `down` runs are returned for the record.
pub(super) fn reverse_schema(
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

/// A release that migrated the schema but never went live (another app of its push failed):
/// its migrations are reversed with their `down`, so that the live release keeps the schema
/// it knows. Says why not when they cannot be.
pub(super) fn reverse_held(
    config: &Config,
    session: &mut super::session::Session,
) -> Result<(), String> {
    let (Some(to), true) = (session.previous_release.clone(), session.migrated) else {
        return Ok(());
    };
    let layout = session.layout.clone();
    let to_schema =
        crate::state::record::live_record(&session.records, &to).and_then(|r| r.schema.clone());
    let env = steps::release_environment(
        config,
        &layout,
        &session.id,
        &session.holder.commit,
        session.previous_commit.as_deref(),
        &session.holder.git_ref,
    )
    .map_err(|err| format!("{err:#}"))?;
    let from = session.id.clone();
    let mut downs = reverse_schema(
        config,
        &layout,
        (&from, session.schema.as_deref()),
        (&to, to_schema.as_deref()),
        &env,
    )
    .map_err(|why| format!("{why}: {to} runs on the schema {from} migrated to"))?;
    session.down_steps.append(&mut downs);
    Ok(())
}
