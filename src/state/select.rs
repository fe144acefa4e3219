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
    let (chosen, notes) = choose(config, updates);
    for note in notes {
        output::say(note);
    }
    chosen.map(|update| target(repo, update)).transpose()
}

/// The pushed ref `config` deploys, if any, and what to tell the pusher about the others.
pub fn choose<'u>(
    config: &Config,
    updates: &'u [RefUpdate],
) -> (Option<&'u RefUpdate>, Vec<String>) {
    let mut notes = Vec::new();
    let mut chosen: Vec<&RefUpdate> = Vec::new();
    for update in updates {
        if !config.selects(&update.name) {
            notes.push(format!(
                "ignored `{}`: not deployed here (this server deploys {})",
                update.name,
                config.describe_selection()
            ));
            continue;
        }
        if update.new.is_none() {
            notes.push(format!(
                "`{}` was deleted: nothing to deploy, the live release stays live",
                update.name
            ));
            continue;
        }
        chosen.push(update);
    }
    let Some(last) = chosen.last().copied() else {
        return (None, notes);
    };
    if chosen.len() > 1 {
        let others: Vec<&str> = chosen[..chosen.len() - 1]
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        notes.push(format!(
            "this push updates several deploy refs; deploying the last one, `{}` (not {})",
            last.name,
            others.join(", ")
        ));
    }
    (Some(last), notes)
}

/// What deploying a pushed ref means: its commit (a tag peeled), and where the ref was.
pub fn target(repo: &Repository, update: &RefUpdate) -> Result<Target> {
    let new = update.new.context("a deleted ref deploys nothing")?;
    let commit = repo
        .find_object(new, None)
        .and_then(|object| object.peel_to_commit())
        .with_context(|| format!("`{}` points at `{new}`, which is not a commit", update.name))?;
    Ok(Target {
        git_ref: update.name.clone(),
        old: update.old,
        commit: commit.id(),
    })
}
