//! Which pushed ref, if any, deploys.
//!
//! Refs the config does not select are reported one line each and left alone; a deleted deploy
//! ref deploys nothing. When one push updates several selected refs, one deploy runs, for the
//! last of them in push order.

use anyhow::{Context, Result};
use git2::{Oid, Repository};

use crate::config::Config;
use crate::state::refs::RefUpdate;
use crate::sys::output;

/// What a deploy is asked to put live.
#[derive(Debug, Clone)]
pub struct Target {
    /// The full ref name, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// What the ref pointed at before the push, if it existed.
    pub old: Option<Oid>,
    /// The commit to deploy (a pushed tag is peeled to its commit).
    pub commit: Oid,
}

pub fn select(repo: &Repository, config: &Config, updates: &[RefUpdate]) -> Result<Option<Target>> {
    let mut chosen: Vec<&RefUpdate> = Vec::new();
    for update in updates {
        if !config.selects(&update.name) {
            output::say(format!(
                "ignored `{}`: not deployed here (this server deploys {})",
                update.name,
                config.describe_selection()
            ));
            continue;
        }
        if update.new.is_none() {
            output::say(format!(
                "`{}` was deleted: nothing to deploy, the live release stays live",
                update.name
            ));
            continue;
        }
        chosen.push(update);
    }
    let Some(last) = chosen.last() else {
        return Ok(None);
    };
    if chosen.len() > 1 {
        let others: Vec<&str> = chosen[..chosen.len() - 1]
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        output::say(format!(
            "this push updates several deploy refs; deploying the last one, `{}` (not {})",
            last.name,
            others.join(", ")
        ));
    }
    let new = last.new.expect("deleted refs were skipped");
    let commit = repo
        .find_object(new, None)
        .and_then(|object| object.peel_to_commit())
        .with_context(|| format!("`{}` points at `{new}`, which is not a commit", last.name))?;
    Ok(Some(Target {
        git_ref: last.name.clone(),
        old: last.old,
        commit: commit.id(),
    }))
}
