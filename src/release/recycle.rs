//! Turning a kept release into the next one: only what the trees changed, and what changed on
//! disk since, is written again (`deploy.recycle_releases`).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use git2::Oid;

use super::durable::Written;
use super::trees::{Changes, Trees};
use super::write::{trust_received_objects, write_entry};
use super::{make_parents, remove_any, InTheWay};
use crate::config::RelPath;
use crate::release::index::{Entry, ReleaseIndex};
use crate::release::stamps::Stamps;
use crate::state::layout::Layout;
use crate::sys::parallel;

/// How an existing release was turned into a new one.
#[derive(Debug, Default)]
pub struct Update {
    pub written: usize,
    pub removed: usize,
    /// Tracked files found changed on disk since they were written (rewritten).
    pub repaired: usize,
    /// Untracked files removed (what steps wrote into the old release).
    pub cleaned: usize,
    /// Every path written or removed, for making them durable.
    pub paths: Written,
}

/// The release a new one is built from.
pub struct Source<'a> {
    /// Its folder under `releases/`, which becomes the new release's.
    pub folder: &'a str,
    /// Its index.
    pub index: ReleaseIndex,
    /// The release it is a snapshot of, when it is one (`snapshot`). The stat data of its files
    /// and folders are then read in that release, whose inodes the kernel has cached, not in the
    /// fresh snapshot, whose inodes it has yet to read (three times slower). That is as right:
    /// the snapshot holds what that release held when it was taken, and whatever changed there
    /// before shows there still (a change after only rewrites a file that needed none).
    pub snapshot_of: Option<&'a str>,
}

/// Builds release `new_id` from the release `source` (an old one, the spare, a snapshot of the
/// live one): renames it,
/// then brings its tracked files to the tree of `commit`, touching only what differs. What
/// differs comes from comparing the old commit's tree with the new one, whole subtrees at a
/// time; a stat check of each file catches what changed on disk since it was written. The old
/// release's links (shared paths, outputs) are removed first and linked again afterwards, so no
/// write can land in `shared/` or in a build, and so are its untracked files: it starts from
/// its commit alone, as a fresh checkout would. The files ats-hook writes into every release
/// (`generated`) go too, uncounted, unless the new commit tracks them.
pub fn update(
    trees: Trees<'_>,
    layout: &Layout,
    source: Source<'_>,
    new_id: &str,
    commit: Oid,
    links: &[&RelPath],
    generated: &[&str],
) -> Result<Update> {
    let (from_id, old) = (source.folder, source.index);
    let dir = layout.release(new_id);
    // Where files are stat'ed: the release itself, or the one it is a snapshot of.
    let seen = match source.snapshot_of {
        Some(id) => layout.release(id),
        None => dir.clone(),
    };
    let index_path = layout.index_file(new_id);
    let clock = std::time::Instant::now();
    let lap = |what: &str| tracing::trace!("update: {what} at {:?}", clock.elapsed());
    // Both trees are read before anything is touched.
    let (old_tree, new_tree) = (trees.of(old.commit)?, trees.of(commit)?);
    trust_received_objects();
    let mut changes = Changes::default();
    trees.compare(&old_tree, &new_tree, "", &mut changes)?;
    lap("trees compared");

    fs::rename(layout.release(from_id), &dir)
        .with_context(|| format!("failed to rename release `{from_id}` to `{new_id}`"))?;
    // Until the new index replaces it, the old one stands for the release: cut short here, the
    // release is its old commit with files changed on disk, which the stat check catches.
    fs::rename(layout.index_file(from_id), &index_path)
        .with_context(|| format!("failed to move the index of `{from_id}`"))?;
    // Taken before anything here moves a folder; without them every folder is listed.
    let stamps = Stamps::load(&layout.stamps_file(from_id));
    let _ = fs::remove_file(layout.stamps_file(from_id));
    for path in links {
        let link = dir.join(path.as_path());
        if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&link)
                .with_context(|| format!("failed to remove `{}`", link.display()))?;
        }
    }

    // What the old release holds, as far as its files are unchanged on disk: one lstat per
    // file, spread over the cores as git spreads its own.
    let unchanged = stat_all(&seen, old.entries());
    let dirty: Vec<Entry> = old
        .entries()
        .iter()
        .zip(unchanged)
        .filter(|(_, unchanged)| !unchanged)
        .map(|(entry, _)| entry.clone())
        .collect();
    lap("stat pass");

    let mut update = Update {
        repaired: dirty.len(),
        ..Update::default()
    };
    let removed: std::collections::HashSet<&[u8]> =
        changes.removed.iter().map(Vec::as_slice).collect();
    // Remove what the new tree does not have (and what changed on disk), deepest first.
    let mut gone: Vec<&[u8]> = removed
        .iter()
        .copied()
        .chain(dirty.iter().map(|e| e.path.as_slice()))
        .collect();
    gone.sort_by(|a, b| b.cmp(a));
    gone.dedup();
    for rel in &gone {
        let path = dir.join(std::ffi::OsStr::from_bytes(rel));
        remove_any(&path)?;
        update
            .paths
            .entry(Path::new(std::ffi::OsStr::from_bytes(rel)));
        if removed.contains(rel) {
            update.removed += 1;
            remove_empty_parents(&dir, &path);
        }
    }
    // Write what the new tree changed, and put back what changed on disk (as it was: the
    // comparison of the trees says it did not change).
    let changed: std::collections::HashSet<&str> =
        changes.written.iter().map(|(p, _, _)| p.as_str()).collect();
    let repairs = dirty.iter().filter_map(|e| {
        let rel = std::str::from_utf8(&e.path).ok()?;
        (!removed.contains(e.path.as_slice()) && !changed.contains(rel))
            .then(|| (rel.to_string(), e.mode, e.id))
    });
    let repairs: Vec<_> = repairs.collect();
    let mut added = Vec::new();
    for (rel, mode, id) in changes.written.iter().chain(&repairs) {
        let path = dir.join(rel);
        make_parents(&dir, Path::new(rel), InTheWay::Replace)?;
        remove_any(&path)?;
        let entry = write_entry(trees, &path, rel, *mode, *id)?;
        update
            .paths
            .file(Path::new(rel), entry.size, *mode & 0o170000 == 0o100000);
        added.push(entry);
    }
    update.written = changes.written.len() + repairs.len();
    let old_folders = old.folders();
    let dropped: std::collections::HashSet<&[u8]> = gone.iter().copied().collect();
    let index = old.changed(commit, new_tree.id(), &dropped, added);
    let folders = index.folders();
    lap("writes");
    for name in generated {
        if !index.contains(name.as_bytes()) {
            let path = dir.join(name);
            if fs::symlink_metadata(&path).is_ok() {
                remove_any(&path)?;
                update.paths.entry(Path::new(name));
            }
        }
    }
    let written = &mut update.paths;
    update.cleaned = match &stamps {
        Some(stamps) => {
            let moved = |folder: &[u8]| stamps.moved(&seen, folder);
            remove_untracked_where_moved(&dir, &moved, &index, &folders, &old_folders, written)?
        }
        None => remove_untracked(&dir, Path::new(""), &index, &folders, written)?,
    };
    lap("untracked");
    index.save(&index_path)?;
    // The release holds its commit alone now: what moves from here on is someone else's.
    Stamps::record(
        &dir,
        folders.iter().map(Vec::as_slice),
        &layout.stamps_file(new_id),
        crate::release::stamps::racy_window(layout),
    )?;
    lap("index and stamps written");
    Ok(update)
}

/// Removes the empty folders above `path`, up to the release.
fn remove_empty_parents(release: &Path, path: &Path) {
    let mut dir = path.parent();
    while let Some(current) = dir {
        if current == release || fs::remove_dir(current).is_err() {
            break;
        }
        dir = current.parent();
    }
}

/// `lstat`s each entry's file, on a few threads: whether each is as the index recorded it.
fn stat_all(release: &Path, entries: &[Entry]) -> Vec<bool> {
    let threads = if entries.len() < 1000 {
        1
    } else {
        parallel::cores()
    };
    parallel::map(entries, threads, |e| {
        e.unchanged_at(&release.join(std::ffi::OsStr::from_bytes(&e.path)))
    })
}

/// Removes what the release holds beyond its commit, listing only the folders whose time moved
/// since their stamp (`moved`; and the folders of the old tree that the new one lacks). Returns
/// how many entries went.
fn remove_untracked_where_moved(
    release: &Path,
    moved: &dyn Fn(&[u8]) -> bool,
    tracked: &ReleaseIndex,
    folders: &std::collections::HashSet<Vec<u8>>,
    old_folders: &std::collections::HashSet<Vec<u8>>,
    written: &mut Written,
) -> Result<usize> {
    let mut removed = 0;
    // A folder the new tree lacks still stands only if something untracked is in it.
    let mut gone: Vec<&Vec<u8>> = old_folders.difference(folders).collect();
    gone.sort();
    for folder in gone {
        let path = release.join(std::ffi::OsStr::from_bytes(folder));
        if tracked.contains(folder.as_slice()) || fs::symlink_metadata(&path).is_err() {
            continue;
        }
        remove_any(&path)?;
        written.entry(Path::new(std::ffi::OsStr::from_bytes(folder)));
        removed += 1;
    }
    let listed = std::iter::once(&b""[..]).chain(folders.iter().map(Vec::as_slice));
    for folder in listed.filter(|folder| moved(folder)) {
        let dir = release.join(std::ffi::OsStr::from_bytes(folder));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("failed to list `{}`", dir.display()))?;
            let child = Path::new(std::ffi::OsStr::from_bytes(folder)).join(entry.file_name());
            let bytes = child.as_os_str().as_bytes();
            if tracked.contains(bytes) {
                continue;
            }
            // A folder of the tree is listed on its own when its time moved.
            if folders.contains(bytes) && entry.file_type()?.is_dir() {
                continue;
            }
            remove_any(&release.join(&child))?;
            written.entry(&child);
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes what the tree does not track; returns how many entries went.
fn remove_untracked(
    release: &Path,
    rel: &Path,
    tracked: &ReleaseIndex,
    folders: &std::collections::HashSet<Vec<u8>>,
    written: &mut Written,
) -> Result<usize> {
    let dir = release.join(rel);
    let mut removed = 0;
    for entry in
        fs::read_dir(&dir).with_context(|| format!("failed to list `{}`", dir.display()))?
    {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        let bytes = child.as_os_str().as_bytes();
        if tracked.contains(bytes) {
            continue;
        }
        if folders.contains(bytes) && entry.file_type()?.is_dir() {
            removed += remove_untracked(release, &child, tracked, folders, written)?;
        } else {
            remove_any(&release.join(&child))?;
            written.entry(&child);
            removed += 1;
        }
    }
    Ok(removed)
}
