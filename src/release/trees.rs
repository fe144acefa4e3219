//! Reading a commit's trees: every name checked (one safe path component, in git's order, none
//! twice), submodules followed when configured, and what turns one tree into another.

use anyhow::{bail, Context, Result};
use git2::{Oid, Repository, Tree};

/// A tree entry's name, refused unless it is one plain path component (no `..`, `/`, `.git`):
/// what a pushed tree could use to write outside its release.
pub(super) fn safe_name<'a>(entry: &'a git2::TreeEntry<'_>, prefix: &str) -> Result<&'a str> {
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
pub(super) fn checked_entries<'t>(
    tree: &'t Tree<'_>,
    prefix: &str,
) -> Result<Vec<git2::TreeEntry<'t>>> {
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
pub(super) fn git_order<'e>(entry: &'e git2::TreeEntry<'_>) -> impl Iterator<Item = u8> + 'e {
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

pub(super) fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.eq_ignore_ascii_case(".git")
}

/// What turns one tree into another: the paths of files to remove, and the files to write.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) removed: Vec<Vec<u8>>,
    pub(super) written: Vec<(String, u32, Oid)>,
}

/// How trees are read: a submodule is an entry of its own (left an empty folder), or, with
/// `deploy.submodules`, the tree of its commit, read through the caches `submodules::attach`
/// made readable.
#[derive(Clone, Copy)]
pub struct Trees<'r> {
    pub repo: &'r Repository,
    pub submodules: bool,
    /// What a release holds of its commit.
    pub view: &'r super::view::View,
    /// Where Git LFS pointers are written from (`deploy.lfs`); none leaves them pointers.
    pub lfs: Option<&'r super::lfs::Lfs>,
}

pub(super) const TREE: u32 = 0o040000;

/// How a config reads commits into releases: its view, submodules, and the LFS store.
pub struct Reading {
    pub view: super::view::View,
    pub submodules: bool,
    pub lfs: Option<super::lfs::Lfs>,
}

impl Reading {
    pub fn new(deploy: &crate::config::DeploySection, repo: &Repository) -> Reading {
        Reading {
            view: super::view::View::of(deploy),
            submodules: deploy.submodules,
            lfs: deploy.lfs.then(|| super::lfs::Lfs::new(repo.path())),
        }
    }

    pub fn trees<'r>(&'r self, repo: &'r Repository) -> Trees<'r> {
        Trees {
            repo,
            submodules: self.submodules,
            view: &self.view,
            lfs: self.lfs.as_ref(),
        }
    }

    /// What was written from the LFS store, for the pusher: `git lfs: 2 files (5.2 MB)`.
    pub fn lfs_note(&self) -> Option<String> {
        let (files, bytes) = self.lfs.as_ref()?.written();
        (files > 0).then(|| {
            format!(
                "git lfs: {} ({}) written from the LFS store",
                crate::sys::output::count(files, "file"),
                crate::sys::output::size(bytes)
            )
        })
    }
}

impl<'r> Trees<'r> {
    /// The tree a release of `commit` holds.
    pub fn of(&self, commit: Oid) -> Result<Tree<'r>> {
        self.view.tree(self.repo, commit)
    }

    fn subtree(&self, id: Oid, rel: &str) -> Result<Tree<'_>> {
        self.repo
            .find_tree(id)
            .with_context(|| format!("failed to read tree `{rel}`"))
    }

    /// An entry's mode and id, a submodule's being its commit's tree when submodules are
    /// checked out.
    fn resolve(&self, entry: &git2::TreeEntry<'_>, rel: &str) -> Result<(u32, Oid)> {
        let mode = entry.filemode() as u32;
        if self.submodules && mode == crate::release::submodules::GITLINK {
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
    pub(super) fn collect(
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
    pub(super) fn compare(
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
