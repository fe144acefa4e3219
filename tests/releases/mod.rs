//! The release store: a new release built from an old one holds exactly its commit's tree,
//! whatever the history did (adds, deletes, renames, modes, symlinks, files turned into
//! folders and back), and the live release and the rollback target are never touched; the
//! spare release, submodules, rollbacks and what they do with the schema.

mod incremental;
mod kept;
mod rollback;
mod schema;
mod snapshots;
mod spare;
mod submodules;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use pretty_assertions::assert_eq;

use crate::support::rng::Rng;

/// Tracked paths of the work tree (files and symlinks), relative.
pub fn tracked(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".git" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// One random change to the work tree.
fn mutate(rng: &mut Rng, dir: &Path, n: usize) {
    let files = tracked(dir);
    let folders = ["", "a/", "a/b/", "c/", "c/d/e/"];
    let pick = |rng: &mut Rng| files[rng.below(files.len())].clone();
    match rng.below(8) {
        // Add a file.
        0 | 1 => {
            let path = dir.join(format!("{}f{n}.txt", folders[rng.below(folders.len())]));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("file {n}\n").repeat(rng.below(50) + 1)).unwrap();
        }
        // Change a file's content.
        2 if !files.is_empty() => {
            let path = dir.join(pick(rng));
            if !path.is_symlink() {
                std::fs::write(path, format!("changed {n}\n")).unwrap();
            }
        }
        // Delete one.
        3 if files.len() > 3 => std::fs::remove_file(dir.join(pick(rng))).unwrap(),
        // Rename one.
        4 if !files.is_empty() => {
            let from = dir.join(pick(rng));
            let to = dir.join(format!("{}moved{n}", folders[rng.below(folders.len())]));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::rename(from, to).unwrap();
        }
        // Flip the executable bit.
        5 if !files.is_empty() => {
            let path = dir.join(pick(rng));
            if !path.is_symlink() {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode ^ 0o111))
                    .unwrap();
            }
        }
        // A symlink, to a file or nowhere.
        6 => {
            let target = if files.is_empty() {
                "nowhere".to_string()
            } else {
                pick(rng)
            };
            let link = dir.join(format!("link{n}"));
            std::os::unix::fs::symlink(target, link).unwrap();
        }
        // A file replaced by a folder of that name, or a folder by a file.
        _ => {
            let file = dir.join("shape");
            if file.is_dir() {
                std::fs::remove_dir_all(&file).unwrap();
                std::fs::write(&file, format!("a file again {n}\n")).unwrap();
            } else {
                let _ = std::fs::remove_file(&file);
                std::fs::create_dir_all(file.join("inner")).unwrap();
                std::fs::write(file.join("inner/x"), format!("now a folder {n}\n")).unwrap();
            }
        }
    }
}

/// Asserts a release holds exactly the commit's tree: same paths, bytes, modes and links, and
/// nothing else but the shared links.
#[track_caller]
fn assert_release_is(repo: &git2::Repository, release: &Path, commit: &str, shared: &[&str]) {
    let tree = repo
        .find_commit(git2::Oid::from_str(commit).unwrap())
        .unwrap()
        .tree()
        .unwrap();
    let mut expected: BTreeMap<String, (i32, Vec<u8>)> = BTreeMap::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |prefix, entry| {
        let path = format!("{prefix}{}", entry.name().unwrap());
        let linked = shared
            .iter()
            .any(|s| path == *s || path.starts_with(&format!("{s}/")));
        if entry.kind() == Some(git2::ObjectType::Blob) && !linked {
            let blob = repo.find_blob(entry.id()).unwrap();
            expected.insert(path, (entry.filemode(), blob.content().to_vec()));
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    // Unless the commit tracks one, ats-hook writes the commit into REVISION.
    expected
        .entry("REVISION".to_string())
        .or_insert_with(|| (0o100644, format!("{commit}\n").into_bytes()));
    let mut actual: BTreeMap<String, (i32, Vec<u8>)> = BTreeMap::new();
    for rel in tracked(release) {
        if shared.contains(&rel.as_str()) {
            continue;
        }
        let path = release.join(&rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let entry = if meta.file_type().is_symlink() {
            (
                0o120000,
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            let mode = if meta.mode() & 0o100 != 0 {
                0o100755
            } else {
                0o100644
            };
            (mode, std::fs::read(&path).unwrap())
        };
        actual.insert(rel, entry);
    }
    let show = |m: &BTreeMap<String, (i32, Vec<u8>)>| -> Vec<String> {
        m.iter()
            .map(|(k, (mode, bytes))| {
                format!("{k} {mode:o} {}", String::from_utf8_lossy(bytes).len())
            })
            .collect()
    };
    assert_eq!(
        show(&actual),
        show(&expected),
        "release {} differs from {commit}",
        release.display()
    );
    assert!(
        actual == expected,
        "release {} has the right paths but other bytes than {commit}",
        release.display()
    );
}

/// Identity of every file of a folder: inode, size, mtime, ctime.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u64, i64, i64, i64)> {
    tracked(dir)
        .into_iter()
        .map(|rel| {
            let meta = std::fs::symlink_metadata(dir.join(&rel)).unwrap();
            (
                rel,
                (
                    meta.ino(),
                    meta.size(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime_nsec(),
                ),
            )
        })
        .collect()
}
