//! Which part of a commit a release holds (`deploy.path`, `deploy.paths`): the whole tree, or
//! one folder's tree as the release's root, with more folders of the repository beside it at
//! their own paths (a shared `libs/`).
//!
//! The tree a release holds is a git tree either way, so that checkouts, fast releases,
//! dependency outputs and the index work on it as on any other. When folders are added, that
//! tree is written in memory only (`in_memory_writes`), never into the repository: it is built
//! again, to the same id, whenever it is needed.

use anyhow::{bail, Context, Result};
use git2::{ObjectType, Oid, Repository, Tree};
use std::path::{Component, Path};

use crate::config::RelPath;

/// What a release holds of its commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The folder whose tree is the release's root; none for the whole tree.
    pub path: Option<RelPath>,
    /// More folders, each at its own path in the release.
    pub paths: Vec<RelPath>,
}

impl View {
    pub fn of(deploy: &crate::config::DeploySection) -> View {
        View {
            path: deploy.path.clone(),
            paths: deploy.paths.clone(),
        }
    }

    pub fn is_whole(&self) -> bool {
        self.path.is_none()
    }

    /// As the index keeps it: the path, then each added folder, one per line; empty for the
    /// whole tree.
    pub fn spec(&self) -> String {
        let Some(path) = &self.path else {
            return String::new();
        };
        std::iter::once(path)
            .chain(&self.paths)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Reads what `spec` wrote.
    pub fn from_spec(spec: &str) -> Result<View> {
        let mut lines = spec.lines();
        let Some(first) = lines.next() else {
            return Ok(View::default());
        };
        Ok(View {
            path: Some(RelPath::new(first)?),
            paths: lines.map(RelPath::new).collect::<Result<_>>()?,
        })
    }

    /// For messages: `backend`, `backend (with libs, proto)`, `the repository`.
    pub fn describe(&self) -> String {
        match &self.path {
            None => "the repository".to_string(),
            Some(path) if self.paths.is_empty() => format!("`{path}`"),
            Some(path) => format!(
                "`{path}` (with {})",
                self.paths
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// For one line: `backend`, `backend and libs`.
    pub fn folders(&self) -> String {
        let names: Vec<String> = self
            .path
            .iter()
            .chain(&self.paths)
            .map(|p| p.to_string())
            .collect();
        match names.split_last() {
            None => "the repository".to_string(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }

    /// The tree a release of `commit` holds.
    pub fn tree<'r>(&self, repo: &'r Repository, commit: Oid) -> Result<Tree<'r>> {
        let root = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .with_context(|| format!("failed to read the tree of `{commit}`"))?;
        let Some(path) = &self.path else {
            return Ok(root);
        };
        let short = crate::sys::output::short(&commit.to_string()).to_string();
        let base = folder_at(repo, &root, path, &short)?.with_context(|| {
            format!("`{path}` (`deploy.path`) is not in commit {short}: the app's folder is gone")
        })?;
        if self.paths.is_empty() {
            return Ok(base);
        }
        let mut id = base.id();
        for extra in &self.paths {
            let Some(folder) = folder_at(repo, &root, extra, &short)? else {
                crate::sys::output::warn(format!(
                    "`{extra}` (`deploy.paths`) is not in commit {short}: the release is without it"
                ));
                continue;
            };
            let parts: Vec<&std::ffi::OsStr> = extra
                .as_path()
                .components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part),
                    _ => None,
                })
                .collect();
            id = insert(repo, id, &parts, folder.id()).with_context(|| {
                format!("`{extra}` (`deploy.paths`) cannot go into the release at its own path")
            })?;
        }
        repo.find_tree(id)
            .with_context(|| format!("failed to read the release's tree `{id}`"))
    }
}

/// The folder at `path` in `root`; none if nothing is there; an error if a file is.
fn folder_at<'r>(
    repo: &'r Repository,
    root: &Tree<'_>,
    path: &RelPath,
    short: &str,
) -> Result<Option<Tree<'r>>> {
    let Ok(entry) = root.get_path(path.as_path()) else {
        return Ok(None);
    };
    if entry.kind() != Some(ObjectType::Tree) {
        bail!("`{path}` is not a folder in commit {short}");
    }
    repo.find_tree(entry.id())
        .map(Some)
        .with_context(|| format!("failed to read the tree of `{path}` in commit {short}"))
}

/// The tree `tree` with the folder `folder` at `parts`, written in memory.
fn insert(repo: &Repository, tree: Oid, parts: &[&std::ffi::OsStr], folder: Oid) -> Result<Oid> {
    let tree = repo.find_tree(tree)?;
    let (name, rest) = parts.split_first().expect("a path has a part");
    let name = Path::new(name);
    let existing = tree.get_path(name).ok();
    let inserted = match (existing, rest.is_empty()) {
        (Some(_), true) => bail!("the app's folder holds `{}` already", name.display()),
        (Some(entry), false) if entry.kind() == Some(ObjectType::Tree) => {
            insert(repo, entry.id(), rest, folder)?
        }
        (Some(_), false) => bail!(
            "the app's folder holds a file `{}` where a folder would go",
            name.display()
        ),
        (None, true) => folder,
        (None, false) => {
            let empty = repo.treebuilder(None)?.write()?;
            insert(repo, empty, rest, folder)?
        }
    };
    let mut builder = repo.treebuilder(Some(&tree))?;
    builder.insert(name, inserted, 0o040000)?;
    Ok(builder.write()?)
}

/// Sends every object ats-hook writes into `repo` (the trees a view composes) to memory, so
/// that nothing it does adds to the repository.
pub fn in_memory_writes(repo: &Repository) -> Result<()> {
    let odb = repo
        .odb()
        .context("failed to open the repository's objects")?;
    // Above the repository's own stores: writes go there first.
    odb.add_new_mempack_backend(1000)
        .context("failed to set up in-memory objects")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Repository, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let mut index = git2::Index::new().unwrap();
        for (path, text) in files {
            let blob = repo.blob(text.as_bytes()).unwrap();
            index
                .add(&git2::IndexEntry {
                    ctime: git2::IndexTime::new(0, 0),
                    mtime: git2::IndexTime::new(0, 0),
                    dev: 0,
                    ino: 0,
                    mode: 0o100644,
                    uid: 0,
                    gid: 0,
                    file_size: text.len() as u32,
                    id: blob,
                    flags: path.len() as u16,
                    flags_extended: 0,
                    path: path.as_bytes().to_vec(),
                })
                .unwrap();
        }
        let tree = index.write_tree_to(&repo).unwrap();
        let tree = repo.find_tree(tree).unwrap();
        let sig = git2::Signature::now("t", "t@example.org").unwrap();
        let commit = repo.commit(None, &sig, &sig, "c", &tree, &[]).unwrap();
        drop(tree);
        (dir, repo, commit)
    }

    fn paths(tree: &Tree<'_>, repo: &Repository) -> Vec<String> {
        let mut out = Vec::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |prefix, entry| {
            if entry.kind() == Some(ObjectType::Blob) {
                let blob = repo.find_blob(entry.id()).unwrap();
                out.push(format!(
                    "{prefix}{}={}",
                    entry.name().unwrap(),
                    String::from_utf8_lossy(blob.content())
                ));
            }
            git2::TreeWalkResult::Ok
        })
        .unwrap();
        out
    }

    fn view(path: &str, extra: &[&str]) -> View {
        View {
            path: Some(RelPath::new(path).unwrap()),
            paths: extra.iter().map(|p| RelPath::new(p).unwrap()).collect(),
        }
    }

    #[test]
    fn a_folder_becomes_the_root_with_added_folders_at_their_paths() {
        let (dir, repo, commit) = repo_with(&[
            ("backend/app.py", "app"),
            ("backend/libs/local.txt", "mine"),
            ("libs/common/x.py", "x"),
            ("proto/api.proto", "p"),
            ("docs/index.md", "d"),
        ]);
        in_memory_writes(&repo).unwrap();
        let tree = view("backend", &[]).tree(&repo, commit).unwrap();
        assert_eq!(paths(&tree, &repo), ["app.py=app", "libs/local.txt=mine"]);
        let tree = view("backend", &["libs/common", "proto"])
            .tree(&repo, commit)
            .unwrap();
        assert_eq!(
            paths(&tree, &repo),
            [
                "app.py=app",
                "libs/common/x.py=x",
                "libs/local.txt=mine",
                "proto/api.proto=p"
            ]
        );
        // Built again, the same tree; and nothing was written into the repository.
        let again = view("backend", &["libs/common", "proto"])
            .tree(&repo, commit)
            .unwrap();
        assert_eq!(again.id(), tree.id());
        let on_disk = Repository::open_bare(dir.path()).unwrap();
        assert!(on_disk.find_tree(tree.id()).is_err());
    }

    #[test]
    fn a_missing_or_clashing_folder_is_an_error_that_names_it() {
        let (_dir, repo, commit) = repo_with(&[
            ("backend/app.py", "app"),
            ("backend/libs", "a file"),
            ("libs/x.py", "x"),
            ("README", "r"),
        ]);
        in_memory_writes(&repo).unwrap();
        let err = view("frontend", &[]).tree(&repo, commit).unwrap_err();
        assert!(format!("{err:#}").contains("`frontend` (`deploy.path`) is not in commit"));
        let err = view("README", &[]).tree(&repo, commit).unwrap_err();
        assert!(
            format!("{err:#}").contains("`README` is not a folder"),
            "{err:#}"
        );
        let err = view("backend", &["libs"]).tree(&repo, commit).unwrap_err();
        assert!(
            format!("{err:#}").contains("holds `libs` already"),
            "{err:#}"
        );
        // A folder named in `paths` that the commit lacks: the release goes without it.
        let tree = view("backend", &["gone"]).tree(&repo, commit).unwrap();
        assert_eq!(paths(&tree, &repo), ["app.py=app", "libs=a file"]);
    }

    #[test]
    fn the_spec_reads_back() {
        for v in [
            View::default(),
            view("backend", &[]),
            view("a/b", &["c", "d/e"]),
        ] {
            assert_eq!(View::from_spec(&v.spec()).unwrap(), v);
        }
    }
}
