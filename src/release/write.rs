//! Writing a commit's tree into a release folder that did not exist before: every folder first
//! (`mkdir(2)`, so a symlink the tree writes can never become a parent), then the files, the
//! small ones spread over writer threads; and one entry at a time for a release built from an
//! old one (`recycle`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use git2::Oid;

use super::durable;
use super::index::{Entry, ReleaseIndex};
use super::Trees;
use crate::sys::output;

#[derive(Debug, Default)]
pub struct Checkout {
    pub files: usize,
    pub bytes: u64,
    /// Every path written, for making them durable.
    pub paths: durable::Written,
}

impl Checkout {
    /// One entry written: a file (its data counted), a symlink or a submodule's folder.
    fn count(&mut self, rel: &str, mode: u32, size: u64) {
        if mode != 0o160000 {
            self.bytes += size;
        }
        self.paths
            .file(Path::new(rel), size, mode & 0o170000 == 0o100000);
        self.files += 1;
    }
}

/// Reads blobs the way `git checkout` does: without hashing each one again. Every object of a
/// push was hashed by git's `index-pack` when it arrived; hashing 60 MB of blobs a second time
/// would double the time of a full checkout.
pub(super) fn trust_received_objects() {
    git2::opts::strict_hash_verification(false);
}

/// Writes the tree of `commit` into `dir` (which must not exist; a btrfs subvolume when
/// `subvolume` and the filesystem is one, see `snapshot`) and its index to `index_path`.
pub fn materialize(
    trees: Trees<'_>,
    commit: Oid,
    dir: &Path,
    index_path: &Path,
    subvolume: bool,
) -> Result<Checkout> {
    let tree = trees.of(commit)?;
    super::snapshot::new_release_folder(dir, subvolume)?;
    trust_received_objects();
    let started = std::time::Instant::now();
    let mut wanted = Vec::new();
    trees.collect(&tree, "", &mut wanted)?;
    tracing::debug!(
        entries = wanted.len(),
        "read the tree in {:?}",
        started.elapsed()
    );
    // The release is new, and every folder in it is one made here with `mkdir(2)`, before any
    // file, which fails on anything already there: a symlink the tree writes can never become a
    // parent.
    let mut folders = std::collections::HashSet::new();
    for (rel, _, _) in &wanted {
        if let Some(parent) = Path::new(rel)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            if !folders.contains(parent) {
                make_new_folders(dir, parent, &mut folders)?;
            }
        }
    }
    let writers = if wanted.len() < 256 {
        1
    } else {
        crate::sys::parallel::cores()
    };
    let mut stats = Checkout::default();
    let entries = write_files(trees, dir, &wanted, writers, &mut stats)?;
    tracing::debug!(writers, "wrote the files in {:?}", started.elapsed());
    ReleaseIndex::new(
        commit,
        tree.id(),
        trees.view.spec(),
        trees.submodules,
        entries,
    )
    .save(index_path)?;
    tracing::debug!("wrote the index in {:?}", started.elapsed());
    Ok(stats)
}

/// Files up to this size are written by the writer threads of a whole checkout; larger ones,
/// symlinks, Git LFS objects and submodules by the thread that reads the tree.
const SMALL_FILE: usize = 64 * 1024;
/// Small files go to a writer in batches of consecutive entries, this many at most, or this
/// much data: two writers rarely create files in one folder (the kernel serializes that).
const BATCH_FILES: usize = 128;
const BATCH_BYTES: usize = 1 << 20;

/// Consecutive small files read from the repository, for a writer thread: each entry's place
/// in the tree, its path, its content.
type Batch = Vec<(usize, PathBuf, Vec<u8>)>;

/// Writes every entry of `wanted` into `dir` (whose folders exist), the small files spread over
/// `writers` threads (creating files is the kernel's work, and a new tree of tens of thousands
/// of them takes seconds on one core), the rest on this one, which reads them all from the
/// repository. Returns the index entries in the order of `wanted`.
fn write_files(
    trees: Trees<'_>,
    dir: &Path,
    wanted: &[(String, u32, Oid)],
    writers: usize,
    stats: &mut Checkout,
) -> Result<Vec<Entry>> {
    let mut entries: Vec<Option<Entry>> = vec![None; wanted.len()];
    let failed = std::sync::atomic::AtomicBool::new(false);
    // Two batches a writer wait at most: a few MiB in memory.
    let (send, receive) = std::sync::mpsc::sync_channel::<Batch>(2 * writers);
    let receive = std::sync::Mutex::new(receive);
    let next = || receive.lock().ok()?.recv().ok();
    let (read, written) = std::thread::scope(|scope| {
        let threads = if writers > 1 { writers } else { 0 };
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    let mut error = None;
                    // Until the reader is done; after a failure, only to let it go on.
                    while let Some(batch) = next() {
                        for (pos, path, content) in batch {
                            if error.is_some() {
                                break;
                            }
                            let (rel, mode, id) = &wanted[pos];
                            match write_file(&path, *mode, &content) {
                                Ok(meta) => done.push((pos, Entry::new(rel, *mode, *id, &meta))),
                                Err(err) => {
                                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                    error = Some(err);
                                }
                            }
                        }
                    }
                    error.map_or(Ok(done), Err)
                })
            })
            .collect();
        // The reader: its end (an error included) lets the writers finish.
        let read = (|| -> Result<()> {
            let send = send;
            let (mut batch, mut batched): (Batch, usize) = (Vec::new(), 0);
            for (pos, (rel, mode, id)) in wanted.iter().enumerate() {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let path = dir.join(rel);
                if workers.is_empty() || !matches!(*mode, 0o100644 | 0o100755) {
                    let entry = write_entry(trees, &path, rel, *mode, *id)?;
                    stats.count(rel, *mode, entry.size);
                    entries[pos] = Some(entry);
                    continue;
                }
                let blob = read_blob(trees, rel, *id)?;
                let pointer = trees.lfs.is_some()
                    && crate::access::lfs::Pointer::parse(blob.content()).is_some();
                if pointer || blob.size() > SMALL_FILE {
                    let meta = write_read_blob(trees, &blob, &path, rel, *mode)?;
                    stats.count(rel, *mode, meta.len());
                    entries[pos] = Some(Entry::new(rel, *mode, *id, &meta));
                    continue;
                }
                stats.count(rel, *mode, blob.size() as u64);
                batched += blob.size();
                batch.push((pos, path, blob.content().to_vec()));
                if batch.len() == BATCH_FILES || batched >= BATCH_BYTES {
                    batched = 0;
                    if send.send(std::mem::take(&mut batch)).is_err() {
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = send.send(batch);
            }
            Ok(())
        })();
        let written: Vec<Result<Vec<(usize, Entry)>>> = workers
            .into_iter()
            .map(|worker| worker.join().expect("a writer thread panicked"))
            .collect();
        (read, written)
    });
    // A writer's failure (the disk full) stopped the reader: it is the one to tell.
    for done in written {
        for (pos, entry) in done? {
            entries[pos] = Some(entry);
        }
    }
    read?;
    entries
        .into_iter()
        .zip(wanted)
        .map(|(entry, (rel, _, _))| entry.with_context(|| format!("`{rel}` was not written")))
        .collect()
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
    trees: Trees<'_>,
    path: &Path,
    rel: &str,
    mode: u32,
    id: Oid,
) -> Result<fs::Metadata> {
    let blob = read_blob(trees, rel, id)?;
    write_read_blob(trees, &blob, path, rel, mode)
}

fn read_blob<'r>(trees: Trees<'r>, rel: &str, id: Oid) -> Result<git2::Blob<'r>> {
    trees
        .repo
        .find_blob(id)
        .with_context(|| format!("failed to read blob of `{rel}`"))
}

/// `write_blob` of a blob already read.
fn write_read_blob(
    trees: Trees<'_>,
    blob: &git2::Blob<'_>,
    path: &Path,
    rel: &str,
    mode: u32,
) -> Result<fs::Metadata> {
    if let (Some(lfs), true) = (trees.lfs, mode != 0o120000) {
        if let Some(pointer) = crate::access::lfs::Pointer::parse(blob.content()) {
            return lfs.write(&pointer, path, rel, mode);
        }
    }
    if mode != 0o120000 {
        return write_file(path, mode, blob.content());
    }
    let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(blob.content());
    std::os::unix::fs::symlink(target, path)
        .with_context(|| format!("failed to create symlink `{}`", path.display()))?;
    fs::symlink_metadata(path).with_context(|| format!("failed to stat `{}`", path.display()))
}

/// Creates the regular file `path`, which must not exist, executable for a `mode` of 100755.
pub(super) fn create_new(path: &Path, mode: u32) -> Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if mode == 0o100755 { 0o777 } else { 0o666 })
        .open(path)
        .with_context(|| format!("failed to create `{}`", path.display()))
}

/// Creates the regular file `path` (which must not exist) with `content`; returns how it is on
/// disk now.
fn write_file(path: &Path, mode: u32, content: &[u8]) -> Result<fs::Metadata> {
    let mut file = create_new(path, mode)?;
    file.write_all(content)
        .with_context(|| format!("failed to write `{}`", path.display()))?;
    // Through the open file: no second walk of the path.
    file.metadata()
        .with_context(|| format!("failed to stat `{}`", path.display()))
}

/// Writes one entry of the tree (a submodule becomes an empty folder), and returns its entry
/// for the index.
pub(super) fn write_entry(
    trees: Trees<'_>,
    path: &Path,
    rel: &str,
    mode: u32,
    id: Oid,
) -> Result<Entry> {
    let meta = match mode {
        0o100644 | 0o100755 | 0o120000 => write_blob(trees, path, rel, mode, id)?,
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
