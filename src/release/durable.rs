//! Making a release durable before it goes live: after a power loss, `current` must not point
//! at files the kernel had not written yet.
//!
//! One `syncfs(2)` writes everything of the filesystem, whoever wrote it: cheap on a quiet
//! server, and as slow as the backlog on a busy one (a database, logs, a `docker pull`, the
//! last push's spare): with gigabytes of RAM, the kernel may hold gigabytes unwritten. So when
//! ats-hook knows every path it wrote into the release ([`Written`], a few files: past
//! `MOST_FILES`, `syncfs` is cheaper), and the system holds more
//! unwritten data than those writes plus what `fsync`ing them one by one is worth, it `fsync`s
//! its own files and the folders whose entries changed instead, and the push does not wait for
//! anyone else's writes. What a step wrote is not known, so a release a step ran in is always
//! made durable with `syncfs`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::state::layout::Layout;

/// What ats-hook wrote into a release since it was last durable: the regular files whose data
/// must reach the disk, and the folders whose entries changed (relative to the release; the
/// empty path is the release itself).
/// Past `MOST_FILES` files it keeps nothing more: such a release is made durable with `syncfs`
/// anyway, and a whole checkout of a large tree need not hold every path twice.
#[derive(Debug, Default)]
pub struct Written {
    files: Vec<PathBuf>,
    folders: BTreeSet<PathBuf>,
    bytes: u64,
    too_many: bool,
}

impl Written {
    /// A file written at `rel`, with `bytes` of data; `data` is false for a symlink (whose
    /// folder holds all of it).
    pub fn file(&mut self, rel: &Path, bytes: u64, data: bool) {
        if data {
            if self.files.len() == MOST_FILES {
                *self = Written {
                    too_many: true,
                    ..Written::default()
                };
            }
            if self.too_many {
                return;
            }
            self.files.push(rel.to_path_buf());
            self.bytes += bytes;
        }
        self.entry(rel);
    }

    /// An entry added, replaced or removed at `rel`: its folder changed, and so may each folder
    /// above it (one of them may be new).
    pub fn entry(&mut self, rel: &Path) {
        if self.too_many {
            return;
        }
        for folder in rel.ancestors().skip(1) {
            if !self.folders.insert(folder.to_path_buf()) {
                // Its own ancestors are in already.
                break;
            }
        }
    }
}

/// How a release was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// One `syncfs(2)`: everything of the filesystem.
    Filesystem,
    /// The release's own files and folders, each `fsync`ed.
    Own {
        files: usize,
        folders: usize,
        /// What the system held unwritten besides them, in bytes.
        others: u64,
    },
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Filesystem => write!(f, "syncfs of its filesystem"),
            Durability::Own {
                files,
                folders,
                others,
            } => write!(
                f,
                "its own {} and {} fsynced, not the {} the system holds unwritten besides",
                crate::sys::output::count(*files, "file"),
                crate::sys::output::count(*folders, "folder"),
                crate::sys::output::size(*others)
            ),
        }
    }
}

/// Unwritten data a `syncfs` may wait for before `fsync`ing each written path is preferred: a
/// few seconds of writing on a slow disk.
const BACKLOG: u64 = 64 << 20;
/// What one `fsync` is taken to cost, in bytes written: each one asks the disk to flush.
const PER_FSYNC: u64 = 32 << 10;
/// The most files fsynced one by one. Past that (a whole checkout), one `syncfs` is cheaper
/// however much it writes besides: on a 2-core VM's ext4, 4,800 `fsync`s took 0.6 s, and a
/// whole checkout of 60,000 files made durable so took seconds longer than with `syncfs`.
const MOST_FILES: usize = 1024;

/// Makes release `id` durable: its files, its folders, its entry in `releases/` and its index.
/// With `written` (everything written into it since it was last durable), its own paths alone
/// when the system's backlog makes that cheaper than a `syncfs`.
pub fn make_durable(layout: &Layout, id: &str, written: Option<&Written>) -> Result<Durability> {
    let dir = layout.release(id);
    let backlog = unwritten_bytes();
    let own = written.zip(backlog).and_then(|(written, backlog)| {
        let others = backlog.saturating_sub(written.bytes);
        let files = written.files.len() as u64;
        (!written.too_many && others > BACKLOG + files * PER_FSYNC).then_some((written, others))
    });
    let Some((written, others)) = own else {
        syncfs(&dir)?;
        return Ok(Durability::Filesystem);
    };
    let files: Vec<PathBuf> = written.files.iter().map(|rel| dir.join(rel)).collect();
    fsync_all(&files)?;
    let mut folders: Vec<PathBuf> = written.folders.iter().map(|rel| dir.join(rel)).collect();
    // The release itself always: it may have been renamed into place.
    if !written.folders.contains(Path::new("")) {
        folders.push(dir.clone());
    }
    let index = layout.index_file(id);
    let index_dir = index.parent().map(Path::to_path_buf);
    folders.extend([layout.releases(), index]);
    folders.extend(index_dir);
    fsync_all(&folders)?;
    Ok(Durability::Own {
        files: files.len(),
        folders: written.folders.len(),
        others,
    })
}

/// Writes everything of the filesystem holding `path` to disk (`syncfs(2)`).
pub fn syncfs(path: &Path) -> Result<()> {
    let dir = File::open(path).with_context(|| format!("failed to open `{}`", path.display()))?;
    nix::unistd::syncfs(&dir)
        .with_context(|| format!("failed to write `{}` to disk", path.display()))
}

/// What the kernel holds unwritten (dirty or being written back), from `/proc/meminfo`.
fn unwritten_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_unwritten(&text)
}

fn parse_unwritten(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib = line[name.len()..].trim().trim_end_matches("kB").trim();
        kib.parse::<u64>().ok().map(|kib| kib * 1024)
    };
    Some(field("Dirty:")? + field("Writeback:")?)
}

/// `fsync`s each path (a file or a folder, never following a symlink), on a few threads: the
/// disk gets them together.
fn fsync_all(paths: &[PathBuf]) -> Result<()> {
    // Each waits on the disk, not the CPU: two at least, even on one core.
    let threads = if paths.len() < 8 {
        1
    } else {
        crate::sys::parallel::cores().max(2)
    };
    crate::sys::parallel::map(paths, threads, |p| fsync(p))
        .into_iter()
        .collect()
}

fn fsync(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("failed to write `{}` to disk", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_changes_its_folders_up_to_the_release() {
        let mut written = Written::default();
        written.file(Path::new("app/views/home.py"), 10, true);
        written.file(Path::new("app/views/link"), 0, false);
        written.entry(Path::new("old.txt"));
        assert_eq!(written.files.len(), 1);
        assert_eq!(written.bytes, 10);
        let folders: Vec<_> = written
            .folders
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(folders, ["", "app", "app/views"]);
    }

    #[test]
    fn past_the_most_files_nothing_is_kept() {
        let mut written = Written::default();
        for n in 0..=MOST_FILES {
            written.file(Path::new(&format!("d{}/f{n}", n % 7)), 1, true);
        }
        assert!(written.too_many);
        assert!(written.files.is_empty() && written.folders.is_empty());
        written.entry(Path::new("x/y"));
        assert!(written.folders.is_empty());
    }

    #[test]
    fn the_backlog_is_dirty_and_writeback_from_meminfo() {
        let meminfo = "MemTotal:       24000000 kB\nDirty:            204800 kB\nWriteback:          1024 kB\n";
        assert_eq!(parse_unwritten(meminfo), Some((204800 + 1024) * 1024));
        assert_eq!(parse_unwritten("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn own_paths_are_fsynced_and_a_vanished_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..20)
            .map(|n| {
                let path = tmp.path().join(format!("f{n}"));
                std::fs::write(&path, b"x").unwrap();
                path
            })
            .collect();
        fsync_all(&paths).unwrap();
        std::fs::remove_file(&paths[13]).unwrap();
        let err = format!("{:#}", fsync_all(&paths).unwrap_err());
        assert!(err.contains("f13"), "{err}");
    }
}
