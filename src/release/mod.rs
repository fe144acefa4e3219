//! The release store on disk: materializing a commit (here), comparing trees (`trees`),
//! recycling a kept release (`recycle`), releases as btrfs subvolumes and their snapshots
//! (`snapshot`), the file index and stamps kept per release, submodule checkouts. Uses
//! `state`, `config` and `sys`.
//!
//! A release is written by walking the commit's tree with git2 into a folder that did not exist
//! before, so nothing of an older release or of the live site is touched; a whole checkout
//! makes every folder first, then spreads its small files over writer threads. Entry names are
//! checked (no `..`, `/`, `.git`), and files are only ever created inside folders this code made,
//! so a pushed tree cannot write outside its release. The release's git index, with the stat
//! data of each written file, is kept in `.ats-hook/index/<id>` so later work can compare a
//! release with its commit cheaply.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use git2::{Oid, Repository};

use crate::config::RelPath;
use crate::release::index::ReleaseIndex;
use crate::state::layout::Layout;
use crate::sys::output;

pub mod durable;
pub mod index;
pub mod lfs;
mod recycle;
pub mod snapshot;
pub mod stamps;
pub mod submodules;
mod trees;
pub mod view;
mod write;

pub use recycle::{update, Source, Update};
pub use trees::{Reading, Trees};
pub use write::{materialize, Checkout};

/// `20261122T045500Z-723cd4e`: the id of a deploy and of the release it makes.
pub fn new_id(layout: &Layout, commit: Oid, now: SystemTime) -> String {
    unique_id(
        layout,
        format!("{}-{}", stamp(now), output::short(&commit.to_string())),
    )
}

/// `20261122T045500Z-rollback-723cd4e`: the id of a rollback to a release of `commit`.
pub fn new_rollback_id(layout: &Layout, commit: &str, now: SystemTime) -> String {
    unique_id(
        layout,
        format!("{}-rollback-{}", stamp(now), output::short(commit)),
    )
}

/// The UTC time in a form that sorts and fits a file name: `20261122T045500Z`.
fn stamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// `base`, or `base-2`, `base-3`… when a release or a log already has that id (the same commit
/// deployed twice in one second).
fn unique_id(layout: &Layout, base: String) -> String {
    let taken =
        |id: &str| fs::symlink_metadata(layout.release(id)).is_ok() || layout.log_file(id).exists();
    let mut id = base.clone();
    let mut n = 2;
    while taken(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// Links each shared path into the release. Returns one note per thing worth telling.
pub fn link_shared(layout: &Layout, release: &Path, paths: &[RelPath]) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for path in paths {
        let shared = layout.shared().join(path.as_path());
        let link = release.join(path.as_path());
        if fs::symlink_metadata(&shared).is_err() {
            if let Some(parent) = shared.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("failed to create `{}`", parent.display()))?;
            }
            make_parents(release, path.as_path(), InTheWay::Refuse)?;
            match fs::symlink_metadata(&link) {
                Ok(meta) if !meta.file_type().is_symlink() => {
                    copy_tree(&link, &shared)?;
                    notes.push(format!("shared: seeded `shared/{path}` from the release"));
                }
                _ => {
                    fs::create_dir(&shared)
                        .with_context(|| format!("failed to create `{}`", shared.display()))?;
                    notes.push(format!("shared: created empty folder `shared/{path}`"));
                }
            }
        }
        if link_path(release, path, &shared)? {
            notes.push(format!(
                "shared: tracked `{path}` replaced by the link to `shared/{path}`"
            ));
        }
    }
    Ok(notes)
}

/// Makes `rel` inside the release a symlink to `target`, replacing what the commit has there.
/// Returns whether it replaced something. The folders above it must be real folders of the
/// release, so that the link cannot land outside it.
pub fn link_path(release: &Path, rel: &RelPath, target: &Path) -> Result<bool> {
    let link = release.join(rel.as_path());
    make_parents(release, rel.as_path(), InTheWay::Refuse)?;
    let replaced = fs::symlink_metadata(&link).is_ok();
    if replaced {
        remove_any(&link)?;
    }
    std::os::unix::fs::symlink(target, &link).with_context(|| {
        format!(
            "failed to link `{}` to `{}`",
            link.display(),
            target.display()
        )
    })?;
    Ok(replaced)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from)
        .with_context(|| format!("failed to stat `{}`", from.display()))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from)?;
        std::os::unix::fs::symlink(target, to)
    } else if meta.is_dir() {
        fs::create_dir(to).with_context(|| format!("failed to create `{}`", to.display()))?;
        for entry in
            fs::read_dir(from).with_context(|| format!("failed to list `{}`", from.display()))?
        {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    } else {
        fs::copy(from, to).map(|_| ())
    }
    .with_context(|| format!("failed to copy `{}` to `{}`", from.display(), to.display()))
}

/// Writes everything of the filesystem holding `release` to disk (`syncfs(2)`): its files, its
/// folders and its index, in one call, however many files it has.
pub fn make_durable(release: &Path) -> Result<()> {
    durable::syncfs(release)
}

/// Points `current` at a release with one `rename(2)`, so a reader sees the old or the new
/// release, never neither.
pub fn switch_current(layout: &Layout, id: &str) -> Result<()> {
    let tmp = layout
        .root()
        .join(format!(".current.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let target = PathBuf::from("releases").join(id);
    std::os::unix::fs::symlink(&target, &tmp)
        .with_context(|| format!("failed to create `{}`", tmp.display()))?;
    fs::rename(&tmp, layout.current()).with_context(|| {
        let _ = fs::remove_file(&tmp);
        format!(
            "failed to switch `{}` to `{}`",
            layout.current().display(),
            target.display()
        )
    })?;
    // Make the switch durable before anything reports it.
    fs::File::open(layout.root())
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("failed to sync `{}`", layout.root().display()))
}

/// Puts `current` back to what it was: another release, or nothing on a first deploy.
pub fn restore_current(layout: &Layout, previous: Option<&str>) -> Result<()> {
    match previous {
        Some(id) => switch_current(layout, id),
        None => match fs::remove_file(layout.current()) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err)
                .with_context(|| format!("failed to remove `{}`", layout.current().display())),
            _ => Ok(()),
        },
    }
}

/// Removes a release and its index.
///
/// The release is first renamed out of the list of releases (`releases/.removing-<id>`), in one
/// `rename(2)`: a removal cut short (a kill, a full disk) never leaves a half-deleted folder
/// that could be listed, recycled or rolled back to. What is left is removed the next time.
pub fn remove(layout: &Layout, id: &str) -> Result<()> {
    let dir = layout.release(id);
    let doomed = layout.releases().join(format!(".removing-{id}"));
    fs::rename(&dir, &doomed)
        .with_context(|| format!("failed to remove old release `{}`", dir.display()))?;
    let _ = fs::remove_file(layout.index_file(id));
    let _ = fs::remove_file(layout.stamps_file(id));
    snapshot::remove_folder(&doomed).with_context(|| format!("failed to remove old release `{id}`"))
}

/// Finishes removals that were cut short (see `remove`), and removes a snapshot that a killed
/// run left unused.
pub fn remove_leftovers(layout: &Layout) -> Result<()> {
    snapshot::discard(layout)?;
    let dir = layout.releases();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".removing-")
        {
            snapshot::remove_folder(&entry.path())?;
        }
    }
    Ok(())
}

/// The releases pruning may remove, in the order it removes them: never the `protected` ones,
/// releases that never went live first, each group oldest first (`ids` is oldest first).
pub fn expendable<'a>(
    ids: &'a [String],
    protected: &[&str],
    went_live: &dyn Fn(&str) -> bool,
) -> Vec<&'a String> {
    let mut candidates: Vec<&String> = ids
        .iter()
        .filter(|id| !protected.contains(&id.as_str()))
        .collect();
    // A stable sort keeps each group oldest first.
    candidates.sort_by_key(|id| went_live(id));
    candidates
}

/// Whether release `live` holds what a release of `commit` would (same view, same tree): with
/// `deploy.path`, a push that left the app's folders alone.
pub fn holds_already(
    repo: &Repository,
    layout: &Layout,
    live: &str,
    view: &view::View,
    commit: Oid,
) -> bool {
    if view.is_whole() {
        return false;
    }
    let Ok(index) = ReleaseIndex::load(&layout.index_file(live)) else {
        return false;
    };
    // A failing read is the checkout's to report.
    index.view == view.spec() && view.tree(repo, commit).is_ok_and(|t| t.id() == index.tree)
}

/// The index of release `id`, when a new release can be built from it: it reads back whole,
/// the commit it holds is still in the repository, and it holds what `trees` reads of a commit
/// (the same view, submodules as `deploy.submodules` says).
pub fn readable_index(trees: Trees<'_>, layout: &Layout, id: &str) -> Result<ReleaseIndex> {
    let (repo, submodules) = (trees.repo, trees.submodules);
    let index = ReleaseIndex::load(&layout.index_file(id))?;
    let view = view::View::from_spec(&index.view)?;
    if &view != trees.view {
        bail!(
            "it holds {} of its commit, and the config now says {}",
            view.describe(),
            trees.view.describe()
        );
    }
    if index.submodules != submodules {
        bail!(
            "it was checked out {} submodules, and `deploy.submodules` is now {submodules}",
            if index.submodules { "with" } else { "without" }
        );
    }
    repo.find_commit(index.commit).with_context(|| {
        format!(
            "its commit `{}` is no longer in the repository",
            index.commit
        )
    })?;
    Ok(index)
}

/// Removes a file, symlink or folder, never following a symlink.
pub fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
    .with_context(|| format!("failed to remove `{}`", path.display()))
}

/// What to do with something that is not a real folder where a folder is needed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum InTheWay {
    /// Fail: a tracked `log -> /var/log` must not let a shared link land outside the release.
    Refuse,
    /// Replace it: the new tree has a folder where the old one had a file or a symlink.
    Replace,
}

/// Creates the folders above `rel` inside `release`, never passing through a symlink, so that
/// what is written there stays inside the release.
pub(super) fn make_parents(release: &Path, rel: &Path, in_the_way: InTheWay) -> Result<()> {
    let mut dir = release.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) if in_the_way == InTheWay::Refuse => bail!(
                "cannot link a shared path through `{}`: it is not a folder of the release",
                dir.display()
            ),
            Ok(_) => fs::remove_file(&dir)
                .with_context(|| format!("failed to remove `{}`", dir.display()))?,
            Err(_) => {}
        }
        fs::create_dir(&dir).with_context(|| format!("failed to create `{}`", dir.display()))?;
    }
    Ok(())
}

/// The file each release holds its commit in, for the app to read.
pub const REVISION_FILE: &str = "REVISION";

/// Writes the commit into the release's `REVISION`, unless the commit tracks a file of that
/// name (then it stays as committed, and the output says so).
pub fn write_revision(dir: &Path, commit: Oid) -> Result<()> {
    let path = dir.join(REVISION_FILE);
    if fs::symlink_metadata(&path).is_ok() {
        output::warn(format!(
            "the commit tracks `{REVISION_FILE}`: ats-hook leaves it as committed instead of writing the commit there"
        ));
        return Ok(());
    }
    fs::write(&path, format!("{commit}\n"))
        .with_context(|| format!("failed to write `{}`", path.display()))
}
