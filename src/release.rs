//! Releases on disk: materializing a commit, linking shared paths, switching `current`, pruning.
//!
//! A release is written by walking the commit's tree with git2 into a folder that did not exist
//! before, so nothing of an older release or of the live site is touched. Entry names are
//! checked (no `..`, `/`, `.git`), and files are only ever created inside folders this code made,
//! so a pushed tree cannot write outside its release. The release's git index, with the stat
//! data of each written file, is kept in `.ats-hook/index/<id>` so later work can compare a
//! release with its commit cheaply.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use git2::{Oid, Repository, Tree};

use crate::config::RelPath;
use crate::index::{Entry, ReleaseIndex};
use crate::layout::Layout;
use crate::output;
use crate::stamps::Stamps;

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

#[derive(Debug, Default)]
pub struct Checkout {
    pub files: usize,
    pub bytes: u64,
}

/// Reads blobs the way `git checkout` does: without hashing each one again. Every object of a
/// push was hashed by git's `index-pack` when it arrived; hashing 60 MB of blobs a second time
/// would double the time of a full checkout.
fn trust_received_objects() {
    git2::opts::strict_hash_verification(false);
}

/// Writes the tree of `commit` into `dir` (which must not exist) and its index to `index_path`.
pub fn materialize(
    trees: Trees<'_>,
    commit: Oid,
    dir: &Path,
    index_path: &Path,
) -> Result<Checkout> {
    let repo = trees.repo;
    let commit = repo
        .find_commit(commit)
        .with_context(|| format!("failed to find commit `{commit}`"))?;
    let tree = commit
        .tree()
        .with_context(|| format!("failed to read the tree of `{}`", commit.id()))?;
    fs::create_dir(dir).with_context(|| format!("failed to create release `{}`", dir.display()))?;
    trust_received_objects();
    let started = std::time::Instant::now();
    let mut wanted = Vec::new();
    trees.collect(&tree, "", &mut wanted)?;
    tracing::debug!(
        entries = wanted.len(),
        "read the tree in {:?}",
        started.elapsed()
    );
    let mut stats = Checkout::default();
    let mut entries = Vec::with_capacity(wanted.len());
    // The release is new, and every folder in it is one this loop made with `mkdir(2)`, which
    // fails on anything already there: a symlink the tree wrote can never become a parent.
    let mut folders = std::collections::HashSet::new();
    for (rel, mode, id) in &wanted {
        if let Some(parent) = Path::new(rel)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            if !folders.contains(parent) {
                make_new_folders(dir, parent, &mut folders)?;
            }
        }
        let path = dir.join(rel);
        let entry = write_entry(repo, &path, rel, *mode, *id)?;
        if *mode != 0o160000 {
            stats.bytes += entry.size;
        }
        stats.files += 1;
        entries.push(entry);
    }
    tracing::debug!("wrote the files in {:?}", started.elapsed());
    ReleaseIndex::new(commit.id(), trees.submodules, entries).save(index_path)?;
    tracing::debug!("wrote the index in {:?}", started.elapsed());
    Ok(stats)
}

/// Creates `parent` and each of its folders not made yet inside the new release `dir`, one
/// `mkdir(2)` each, outermost first.
fn make_new_folders(
    dir: &Path,
    parent: &Path,
    folders: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
    let mut missing: Vec<&Path> = parent
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !folders.contains(*p))
        .collect();
    missing.reverse();
    for folder in missing {
        let path = dir.join(folder);
        fs::create_dir(&path).with_context(|| format!("failed to create `{}`", path.display()))?;
        folders.insert(folder.to_path_buf());
    }
    Ok(())
}

/// Writes one file or symlink of the tree at `path`, which must not exist. Returns how it is
/// on disk now.
fn write_blob(
    repo: &Repository,
    path: &Path,
    rel: &str,
    mode: u32,
    id: Oid,
) -> Result<fs::Metadata> {
    let blob = repo
        .find_blob(id)
        .with_context(|| format!("failed to read blob of `{rel}`"))?;
    if mode == 0o120000 {
        let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(blob.content());
        std::os::unix::fs::symlink(target, path)
            .with_context(|| format!("failed to create symlink `{}`", path.display()))?;
        fs::symlink_metadata(path)
    } else {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if mode == 0o100755 { 0o777 } else { 0o666 })
            .open(path)
            .with_context(|| format!("failed to create `{}`", path.display()))?;
        file.write_all(blob.content())
            .with_context(|| format!("failed to write `{}`", path.display()))?;
        // Through the open file: no second walk of the path.
        file.metadata()
    }
    .with_context(|| format!("failed to stat `{}`", path.display()))
}

/// A tree entry's name, refused unless it is one plain path component (no `..`, `/`, `.git`):
/// what a pushed tree could use to write outside its release.
fn safe_name<'a>(entry: &'a git2::TreeEntry<'_>, prefix: &str) -> Result<&'a str> {
    match std::str::from_utf8(entry.name_bytes()) {
        Ok(name) if is_safe_name(name) => Ok(name),
        _ => bail!(
            "the commit holds an unsafe path `{prefix}{}`; refusing to check it out",
            String::from_utf8_lossy(entry.name_bytes())
        ),
    }
}

/// A tree's entries, refused unless git itself could have written them: each name safe, in
/// git's order, none twice. A tree written by hand (`git hash-object -t tree --literally`) may
/// hold a symlink `a` and a folder `a`, so that a checkout writes `a/x` wherever `a` points.
fn checked_entries<'t>(tree: &'t Tree<'_>, prefix: &str) -> Result<Vec<git2::TreeEntry<'t>>> {
    let entries: Vec<git2::TreeEntry<'t>> = tree.iter().collect();
    let mut names = std::collections::HashSet::with_capacity(entries.len());
    let mut previous: Option<&git2::TreeEntry<'t>> = None;
    for entry in &entries {
        let name = safe_name(entry, prefix)?;
        if !names.insert(entry.name_bytes()) {
            bail!(
                "the commit's tree holds `{prefix}{name}` twice; refusing to check it out (git itself never writes such a tree)"
            );
        }
        if previous.is_some_and(|p| git_order(p).cmp(git_order(entry)).is_ge()) {
            bail!(
                "the commit's tree lists `{prefix}{name}` out of git's order; refusing to check it out (git itself never writes such a tree)"
            );
        }
        previous = Some(entry);
    }
    Ok(entries)
}

/// How git sorts a tree's entries: by name, a folder's name as if it ended in `/`.
fn git_order<'e>(entry: &'e git2::TreeEntry<'_>) -> impl Iterator<Item = u8> + 'e {
    let end = if entry.filemode() as u32 == TREE {
        b'/'
    } else {
        0
    };
    entry
        .name_bytes()
        .iter()
        .copied()
        .chain(std::iter::once(end))
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.eq_ignore_ascii_case(".git")
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
    let dir = fs::File::open(release)
        .with_context(|| format!("failed to open `{}`", release.display()))?;
    nix::unistd::syncfs(&dir)
        .with_context(|| format!("failed to write `{}` to disk", release.display()))
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
    fs::remove_dir_all(&doomed)
        .with_context(|| format!("failed to remove old release `{}`", doomed.display()))
}

/// Finishes removals that were cut short (see `remove`).
pub fn remove_leftovers(layout: &Layout) -> Result<()> {
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
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("failed to remove `{}`", entry.path().display()))?;
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

/// The index of release `id`, when a new release can be built from it: it reads back whole,
/// the commit it holds is still in the repository, and it was checked out with submodules as
/// `submodules` says.
pub fn readable_index(
    repo: &Repository,
    layout: &Layout,
    id: &str,
    submodules: bool,
) -> Result<ReleaseIndex> {
    let index = ReleaseIndex::load(&layout.index_file(id))?;
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

/// How an existing release was turned into a new one.
#[derive(Debug, Default)]
pub struct Update {
    pub written: usize,
    pub removed: usize,
    /// Tracked files found changed on disk since they were written (rewritten).
    pub repaired: usize,
    /// Untracked files removed (what steps wrote into the old release).
    pub cleaned: usize,
}

/// Builds release `new_id` from the old release `from_id`, whose index is `old`: renames it,
/// then brings its tracked files to the tree of `commit`, touching only what differs. What
/// differs comes from comparing the old commit's tree with the new one, whole subtrees at a
/// time; a stat check of each file catches what changed on disk since it was written. The old
/// release's links (shared paths, outputs) are removed first and linked again afterwards, so no
/// write can land in `shared/` or in a build, and so are its untracked files: it starts from
/// its commit alone, as a fresh checkout would. The files ats-hook writes into every release
/// (`generated`) go too, uncounted, unless the new commit tracks them.
#[allow(clippy::too_many_arguments)]
pub fn update(
    trees: Trees<'_>,
    layout: &Layout,
    from_id: &str,
    old: ReleaseIndex,
    new_id: &str,
    commit: Oid,
    links: &[&RelPath],
    generated: &[&str],
) -> Result<Update> {
    let repo = trees.repo;
    let dir = layout.release(new_id);
    let index_path = layout.index_file(new_id);
    let clock = std::time::Instant::now();
    let lap = |what: &str| tracing::trace!("update: {what} at {:?}", clock.elapsed());
    // Both trees are read before anything is touched.
    let tree_of = |id: Oid| {
        repo.find_commit(id)
            .and_then(|c| c.tree())
            .with_context(|| format!("failed to read the tree of `{id}`"))
    };
    let (old_tree, new_tree) = (tree_of(old.commit)?, tree_of(commit)?);
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
    let unchanged = stat_all(&dir, old.entries());
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
        added.push(write_entry(repo, &path, rel, *mode, *id)?);
    }
    update.written = changes.written.len() + repairs.len();
    let old_folders = old.folders();
    let dropped: std::collections::HashSet<&[u8]> = gone.iter().copied().collect();
    let index = old.changed(commit, &dropped, added);
    let folders = index.folders();
    lap("writes");
    for name in generated {
        if !index.contains(name.as_bytes()) {
            let path = dir.join(name);
            if fs::symlink_metadata(&path).is_ok() {
                remove_any(&path)?;
            }
        }
    }
    update.cleaned = match &stamps {
        Some(stamps) => remove_untracked_where_moved(&dir, stamps, &index, &folders, &old_folders)?,
        None => remove_untracked(&dir, Path::new(""), &index, &folders)?,
    };
    lap("untracked");
    index.save(&index_path)?;
    // The release holds its commit alone now: what moves from here on is someone else's.
    Stamps::record(
        &dir,
        folders.iter().map(Vec::as_slice),
        &layout.stamps_file(new_id),
    )?;
    lap("index and stamps written");
    Ok(update)
}

/// What turns one tree into another: the paths of files to remove, and the files to write.
#[derive(Debug, Default)]
struct Changes {
    removed: Vec<Vec<u8>>,
    written: Vec<(String, u32, Oid)>,
}

/// How trees are read: a submodule is an entry of its own (left an empty folder), or, with
/// `deploy.submodules`, the tree of its commit, read through the caches `submodules::attach`
/// made readable.
#[derive(Clone, Copy)]
pub struct Trees<'r> {
    pub repo: &'r Repository,
    pub submodules: bool,
}

const TREE: u32 = 0o040000;

impl Trees<'_> {
    fn subtree(&self, id: Oid, rel: &str) -> Result<Tree<'_>> {
        self.repo
            .find_tree(id)
            .with_context(|| format!("failed to read tree `{rel}`"))
    }

    /// An entry's mode and id, a submodule's being its commit's tree when submodules are
    /// checked out.
    fn resolve(&self, entry: &git2::TreeEntry<'_>, rel: &str) -> Result<(u32, Oid)> {
        let mode = entry.filemode() as u32;
        if self.submodules && mode == crate::submodules::GITLINK {
            let tree = self
                .repo
                .find_commit(entry.id())
                .map(|c| c.tree_id())
                .with_context(|| {
                    format!(
                        "submodule `{rel}`: its commit `{}` is not available (does `.gitmodules` list `{rel}`?)",
                        entry.id()
                    )
                })?;
            return Ok((TREE, tree));
        }
        Ok((mode, entry.id()))
    }

    /// Every file, symlink and submodule of a tree, with its path, mode and id.
    fn collect(
        &self,
        tree: &Tree<'_>,
        prefix: &str,
        out: &mut Vec<(String, u32, Oid)>,
    ) -> Result<()> {
        for entry in checked_entries(tree, prefix)? {
            let name = safe_name(&entry, prefix)?;
            let rel = format!("{prefix}{name}");
            match self.resolve(&entry, &rel)? {
                (TREE, id) => self.collect(&self.subtree(id, &rel)?, &format!("{rel}/"), out)?,
                (mode, id) => out.push((rel, mode, id)),
            }
        }
        Ok(())
    }

    /// The paths of every file of the old tree `id` at `rel`, for removal. A submodule whose
    /// commit no cache holds any more goes as a whole folder.
    fn removed_files(&self, id: Oid, rel: &str, changes: &mut Changes) -> Result<()> {
        for entry in self.subtree(id, rel)?.iter() {
            self.removed_entry(&entry, &format!("{rel}/"), changes)?;
        }
        Ok(())
    }

    /// An old tree's `entry` at `prefix` that the new tree lacks: its files, or the whole path
    /// for a file, or a submodule whose commit is gone.
    fn removed_entry(
        &self,
        entry: &git2::TreeEntry<'_>,
        prefix: &str,
        changes: &mut Changes,
    ) -> Result<()> {
        // The old tree was checked out, so its names were all safe.
        let Ok(name) = std::str::from_utf8(entry.name_bytes()) else {
            return Ok(());
        };
        let rel = format!("{prefix}{name}");
        match self.resolve(entry, &rel) {
            Ok((TREE, id)) => self.removed_files(id, &rel, changes),
            _ => {
                changes.removed.push(rel.into_bytes());
                Ok(())
            }
        }
    }

    /// Compares tree `old` with tree `new` (both at `prefix`), skipping every subtree they
    /// share: the cost follows the change, not the size of the tree.
    fn compare(
        &self,
        old: &Tree<'_>,
        new: &Tree<'_>,
        prefix: &str,
        changes: &mut Changes,
    ) -> Result<()> {
        for entry in checked_entries(new, prefix)? {
            let name = safe_name(&entry, prefix)?;
            let rel = format!("{prefix}{name}");
            let (mode, id) = self.resolve(&entry, &rel)?;
            // What the old release holds there. An old submodule commit no cache has any more
            // counts as something else: the folder goes whole and the new one is written.
            let before = old.get_name(name).map(|b| {
                self.resolve(&b, &rel)
                    .unwrap_or((b.filemode() as u32, b.id()))
            });
            if before == Some((mode, id)) {
                continue;
            }
            match (before, mode) {
                (Some((TREE, old_id)), TREE) => self.compare(
                    &self.subtree(old_id, &rel)?,
                    &self.subtree(id, &rel)?,
                    &format!("{rel}/"),
                    changes,
                )?,
                (before, TREE) => {
                    if before.is_some() {
                        changes.removed.push(rel.clone().into_bytes());
                    }
                    self.collect(
                        &self.subtree(id, &rel)?,
                        &format!("{rel}/"),
                        &mut changes.written,
                    )?;
                }
                (before, _) => {
                    if let Some((TREE, old_id)) = before {
                        self.removed_files(old_id, &rel, changes)?;
                    }
                    changes.written.push((rel, mode, id));
                }
            }
        }
        for entry in old.iter() {
            if new.get_name_bytes(entry.name_bytes()).is_none() {
                self.removed_entry(&entry, prefix, changes)?;
            }
        }
        Ok(())
    }
}

use std::os::unix::ffi::OsStrExt;

/// Writes one entry of the tree (a submodule becomes an empty folder), and returns its entry
/// for the index.
fn write_entry(repo: &Repository, path: &Path, rel: &str, mode: u32, id: Oid) -> Result<Entry> {
    let meta = match mode {
        0o100644 | 0o100755 | 0o120000 => write_blob(repo, path, rel, mode, id)?,
        0o160000 => {
            // Its folder exists; its content is not part of this commit.
            fs::create_dir(path)
                .with_context(|| format!("failed to create `{}`", path.display()))?;
            output::warn(format!(
                "submodule `{rel}` is left empty (`deploy.submodules = true` checks it out)"
            ));
            fs::symlink_metadata(path)
                .with_context(|| format!("failed to stat `{}`", path.display()))?
        }
        other => bail!("`{rel}` has an unknown file mode {other:o}"),
    };
    Ok(Entry::new(rel, mode, id, &meta))
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
enum InTheWay {
    /// Fail: a tracked `log -> /var/log` must not let a shared link land outside the release.
    Refuse,
    /// Replace it: the new tree has a folder where the old one had a file or a symlink.
    Replace,
}

/// Creates the folders above `rel` inside `release`, never passing through a symlink, so that
/// what is written there stays inside the release.
fn make_parents(release: &Path, rel: &Path, in_the_way: InTheWay) -> Result<()> {
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

/// Removes what the tree does not track; returns how many entries went.
/// `lstat`s each entry's file, on a few threads: whether each is as the index recorded it.
fn stat_all(release: &Path, entries: &[Entry]) -> Vec<bool> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    if threads == 1 || entries.len() < 1000 {
        return entries
            .iter()
            .map(|e| e.unchanged_at(&release.join(std::ffi::OsStr::from_bytes(&e.path))))
            .collect();
    }
    let chunk = entries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|e| {
                            e.unchanged_at(&release.join(std::ffi::OsStr::from_bytes(&e.path)))
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("an lstat thread panicked"))
            .collect()
    })
}

/// Removes what the release holds beyond its commit, listing only the folders whose time moved
/// since their stamp (and the folders of the old tree that the new one lacks). Returns how
/// many entries went.
fn remove_untracked_where_moved(
    release: &Path,
    stamps: &Stamps,
    tracked: &ReleaseIndex,
    folders: &std::collections::HashSet<Vec<u8>>,
    old_folders: &std::collections::HashSet<Vec<u8>>,
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
        removed += 1;
    }
    let listed = std::iter::once(&b""[..]).chain(folders.iter().map(Vec::as_slice));
    for folder in listed.filter(|folder| stamps.moved(release, folder)) {
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
            removed += 1;
        }
    }
    Ok(removed)
}

fn remove_untracked(
    release: &Path,
    rel: &Path,
    tracked: &ReleaseIndex,
    folders: &std::collections::HashSet<Vec<u8>>,
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
            removed += remove_untracked(release, &child, tracked, folders)?;
        } else {
            remove_any(&release.join(&child))?;
            removed += 1;
        }
    }
    Ok(removed)
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
