//! Git LFS files in releases: a blob that is an LFS pointer is written as the object it names,
//! copied from the repository's LFS store (`access::lfs::Store`; the kernel shares the blocks
//! where the filesystem can), so a release holds the real files. A pointer whose object never
//! reached the server fails the checkout, naming the file, before anything goes live.

use std::cell::Cell;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::access::lfs::{Pointer, Store};

/// The LFS store releases are written from, and what was written from it.
pub struct Lfs {
    store: Store,
    written: Cell<(usize, u64)>,
}

impl Lfs {
    /// For the bare repository at `repo_dir`.
    pub fn new(repo_dir: &Path) -> Lfs {
        Lfs {
            store: Store::of_repo(repo_dir),
            written: Cell::new((0, 0)),
        }
    }

    /// Writes the object of `pointer` at `path` (which must not exist), as the file `rel` of
    /// the tree with `mode`. Returns how it is on disk.
    pub fn write(
        &self,
        pointer: &Pointer,
        path: &Path,
        rel: &str,
        mode: u32,
    ) -> Result<fs::Metadata> {
        let mut from = match self.store.open(&pointer.oid) {
            Ok((file, size)) if size == pointer.size => file,
            _ => bail!(
                "`{rel}` is a Git LFS pointer to an object the server does not have (sha256:{}, {}): push it with `git lfs push --all <remote> <branch>`, then push again",
                crate::sys::output::prefix(&pointer.oid, 12),
                crate::sys::output::size(pointer.size)
            ),
        };
        let mut to = super::write::create_new(path, mode)?;
        // A copy the kernel does itself (copy_file_range), sharing blocks where it can.
        let copied = std::io::copy(&mut from, &mut to)
            .with_context(|| format!("failed to write `{}` from the LFS store", path.display()))?;
        if copied != pointer.size {
            bail!(
                "the LFS object of `{rel}` has {copied} bytes, not the {} its pointer names",
                pointer.size
            );
        }
        let (files, bytes) = self.written.get();
        self.written.set((files + 1, bytes + copied));
        to.metadata()
            .with_context(|| format!("failed to stat `{}`", path.display()))
    }

    /// How many files, of how many bytes, were written from the store.
    pub fn written(&self) -> (usize, u64) {
        self.written.get()
    }
}
