//! The new release's files: built from an old release or the spare when there is one to
//! reuse, else checked out whole, with what the pusher reads of it.

use super::session::Session;
use crate::config::Config;
use crate::pipeline::prune;
use crate::pipeline::spare;
use crate::release;
use crate::state::select::Target;
use crate::sys::output::{self, seconds};
use anyhow::Result;
use git2::Repository;
use std::time::Instant;

/// Makes the new release's files: built from an old release when there is one to reuse, else
/// checked out whole.
pub(super) fn make_release(
    repo: &Repository,
    config: &Config,
    session: &mut Session,
    target: &Target,
) -> Result<()> {
    let layout = session.layout.clone();
    let id = session.id.clone();
    let dir = layout.release(&id);
    let clock = Instant::now();
    // An old release to build from, or before there are any, a snapshot of the live release
    // (on btrfs) or the spare prepared after the last push (held under its lock until it is
    // this release).
    let base = match prune::recycle_candidate(config, &layout, &session.records)? {
        Some(old) => Some(Base::Old(old)),
        None => match snapshot_of_live(config, &layout, session.previous_release.as_deref()) {
            Some(live) => Some(Base::Snapshot(live)),
            None => spare::take(config, &layout, &session.records)?
                .map(|lock| Base::Spare { _lock: lock }),
        },
    };
    let submodules = config.deploy.submodules;
    if submodules {
        crate::release::submodules::attach(
            repo,
            &layout,
            &config.deploy.submodule_urls,
            target.commit,
        )?;
    }
    let reading = release::Reading::new(&config.deploy, repo);
    let trees = reading.trees(repo);
    // Its index says what it holds; without a readable one, it is not built from.
    let base = base.and_then(
        |base| match release::readable_index(trees, &layout, base.folder()) {
            Ok(index) => Some((base, index)),
            Err(err) => {
                output::say(format!(
                    "not building from {}: {err:#}; checking the tree out whole",
                    base.describe()
                ));
                None
            }
        },
    );
    let (base, index) = match base {
        Some((base, index)) => (Some(base), Some(index)),
        None => (None, None),
    };
    match (&base, index) {
        (Some(base), Some(index)) => {
            let links: Vec<_> = config
                .shared
                .paths
                .iter()
                .chain(config.steps.iter().flat_map(|step| &step.outputs))
                .collect();
            let generated: &[&str] = if config.deploy.revision_file {
                &[release::REVISION_FILE]
            } else {
                &[]
            };
            let durable = base.was_durable(&session.records);
            let source = release::Source {
                folder: base.folder(),
                index,
                snapshot_of: base.snapshot_of(),
            };
            let update = release::update(
                trees,
                &layout,
                source,
                &id,
                target.commit,
                &links,
                generated,
            )?;
            let mut note = format!(
                "{} written, {} removed",
                output::count(update.written, "file"),
                update.removed
            );
            if update.repaired > 0 {
                note.push_str(&format!(
                    ", {} changed on disk and rewritten",
                    update.repaired
                ));
            }
            if update.cleaned > 0 {
                note.push_str(&format!(", {} untracked removed", update.cleaned));
            }
            output::say(format!(
                "built from {}: {note} in {}",
                base.describe(),
                seconds(clock.elapsed())
            ));
            // Its other files were made durable with it; a release never made durable (its
            // deploy stopped before) could hold files the kernel has yet to write.
            session.written = durable.then_some(update.paths);
        }
        _ => {
            let checkout = release::materialize(
                trees,
                target.commit,
                &dir,
                &layout.index_file(&id),
                config.deploy.snapshot_releases,
            )?;
            output::say(format!(
                "checked out {} ({}) in {}",
                output::count(checkout.files, "file"),
                output::size(checkout.bytes),
                seconds(clock.elapsed())
            ));
            session.written = Some(checkout.paths);
            // Stamped now, before anything else writes into it, so that the push that builds
            // from it one day lists only the folders that moved.
            release::stamps::Stamps::record_when_settled(&layout, &id, spare::SHORT_PAUSE)?;
        }
    }
    if let Some(note) = reading.lfs_note() {
        output::say(note);
    }
    if config.deploy.revision_file {
        release::write_revision(&dir, target.commit)?;
        if let Some(written) = &mut session.written {
            // The commit's 40 hex digits and a newline.
            written.file(std::path::Path::new(release::REVISION_FILE), 41, true);
        }
    }
    session.checkout = Some(clock.elapsed());
    session.timings.push(("checkout".into(), clock.elapsed()));
    session.built_from = base.as_ref().map(Base::recorded);
    Ok(())
}

/// The live release, once `releases/.snapshot` is a snapshot of it to build the new release
/// from; `None` when snapshots do not serve here, or the snapshot failed (said, not fatal: the
/// spare or a whole checkout follows).
fn snapshot_of_live(
    config: &Config,
    layout: &crate::state::layout::Layout,
    live: Option<&str>,
) -> Option<String> {
    let live = live?;
    if !release::snapshot::serves(&config.deploy, layout, live) {
        return None;
    }
    match release::snapshot::take(layout, live) {
        Ok(()) => Some(live.to_string()),
        Err(err) => {
            output::say(format!("not building from a snapshot: {err:#}"));
            let _ = release::snapshot::discard(layout);
            None
        }
    }
}

/// What a new release is built from.
enum Base {
    /// An old release, by id.
    Old(String),
    /// A snapshot of the live release (by id) on btrfs.
    Snapshot(String),
    /// The spare; its lock, held until the release has taken its folder.
    Spare { _lock: spare::SpareLock },
}

impl Base {
    /// Its folder under `releases/`.
    fn folder(&self) -> &str {
        match self {
            Base::Old(id) => id,
            Base::Snapshot(_) => release::snapshot::SNAPSHOT,
            Base::Spare { .. } => spare::SPARE,
        }
    }

    /// The release it is a snapshot of, when it is one.
    fn snapshot_of(&self) -> Option<&str> {
        match self {
            Base::Snapshot(live) => Some(live),
            _ => None,
        }
    }

    /// Whether it was made durable whole: the spare always is before it is named ready, a
    /// snapshot as it is made (btrfs commits its transaction); an old release, when its deploy
    /// got that far (the history recorded its sync).
    fn was_durable(&self, records: &[crate::state::record::DeployRecord]) -> bool {
        match self {
            Base::Old(id) => records
                .iter()
                .any(|r| r.release == *id && r.sync_ms.is_some()),
            Base::Snapshot(_) | Base::Spare { .. } => true,
        }
    }

    /// As the history records it (`built_from`).
    fn recorded(&self) -> String {
        match self {
            Base::Old(id) => id.clone(),
            Base::Snapshot(live) => format!("snapshot of {live}"),
            Base::Spare { .. } => "spare".to_string(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Base::Old(id) => format!("old release {id}"),
            Base::Snapshot(live) => format!("a snapshot of the live release {live}"),
            Base::Spare { .. } => "the spare release".to_string(),
        }
    }
}
