//! The newest push wins (`deploy.queue = "newest"`, the default): when pushes to one branch
//! wait for the deploy lock, only the last to arrive deploys; the others stop once they get the
//! lock, recorded as `superseded`, and say which commit deploys instead.
//!
//! Each push announces itself before it waits (with `queue = "all"` too, where nothing acts
//! on it): `.ats-hook/queue/<ref>` names the commit and the
//! pid of the last push that arrived for that ref. A push that gets the lock and finds another
//! commit named there was overtaken. Unless that newer push died before its deploy (its pid is
//! gone and the history has no deploy of its commit), then this push deploys, since nobody
//! else would. `deploy` by hand neither announces itself nor stops: it deploys what it is told.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::state::layout::Layout;
use crate::state::record::{DeployRecord, State};

/// The last push to arrive for a ref.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Arrival {
    commit: String,
    pid: u32,
}

/// The push that overtook this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newer {
    pub commit: String,
    /// Whether it has deployed already (else it deploys next).
    pub deployed: bool,
}

fn file(layout: &Layout, git_ref: &str) -> PathBuf {
    layout
        .state()
        .join("queue")
        .join(crate::sys::output::short_hash(git_ref.as_bytes()))
}

/// Announces this push, before it waits for the lock.
pub fn arrive(layout: &Layout, git_ref: &str, commit: &str) -> Result<()> {
    let path = file(layout, git_ref);
    let dir = path.parent().expect("the queue file has a folder");
    fs::create_dir_all(dir).with_context(|| format!("failed to create `{}`", dir.display()))?;
    let tmp = path.with_extension(format!("{}.new", std::process::id()));
    let arrival = Arrival {
        commit: commit.to_string(),
        pid: std::process::id(),
    };
    fs::write(&tmp, serde_json::to_vec(&arrival)?)
        .with_context(|| format!("failed to write `{}`", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("failed to write `{}`", path.display()))
}

/// Under the lock: the push that arrived after this one for `git_ref`, if one did and it still
/// deploys (or already has, per `records`).
pub fn overtaken_by(
    layout: &Layout,
    git_ref: &str,
    commit: &str,
    records: &[DeployRecord],
) -> Option<Newer> {
    let arrival: Arrival = serde_json::from_slice(&fs::read(file(layout, git_ref)).ok()?).ok()?;
    if arrival.commit == commit || arrival.pid == std::process::id() {
        return None;
    }
    // Live from this ref now: the last deploy of the ref that succeeded (or found its commit
    // held what was live already).
    let deployed = records
        .iter()
        .rev()
        .find(|r| r.git_ref == git_ref && matches!(r.state, State::Succeeded | State::Unchanged))
        .is_some_and(|r| r.commit == arrival.commit);
    let waiting = crate::sys::procs::alive(arrival.pid as i32);
    (deployed || waiting).then_some(Newer {
        commit: arrival.commit,
        deployed,
    })
}
