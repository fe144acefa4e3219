//! A release's index: the commit it holds, and for each tracked file its path, mode and blob,
//! with the size, modification time and inode the file had when ats-hook wrote it.
//!
//! It lives in `.ats-hook/index/<id>` and says, without reading the release's files, what the
//! release holds: one `lstat` per file tells whether a file is still as written, and comparing
//! the commit's tree with a new one (whole subtrees at a time) tells what a new release must
//! change. It is ats-hook's own compact format, not git's: the hook reads and writes it on every
//! push, and on a 60,000-file tree git's format through libgit2 cost about 40 ms to read and
//! 30 ms to write, where this one costs a few.
//!
//! Layout (little-endian): `MAGIC`, the commit (20 bytes), the tree the release holds (20
//! bytes), its view (`view::View::spec`: length u32, text), flags (u32: 1 = submodules checked
//! out), the number of entries (u32), the
//! entries in path order (mode u32, blob 20 bytes, size u64, mtime seconds i64, mtime
//! nanoseconds u32, inode u64, path length u32, path), and a CRC-32 of all that. A file that
//! does not read back whole is refused, never half-trusted. An index of the first version
//! (`MAGIC_V1`: no tree, no view) is read as the whole tree of its commit.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use git2::Oid;

const MAGIC: &[u8; 8] = b"ATSIDX\x00\x02";
const MAGIC_V1: &[u8; 8] = b"ATSIDX\x00\x01";

/// One tracked file, symlink or submodule of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub mode: u32,
    pub id: Oid,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ino: u64,
}

impl Entry {
    /// The entry for `rel` in the release, as `meta` says it is on disk.
    pub fn new(rel: &str, mode: u32, id: Oid, meta: &fs::Metadata) -> Entry {
        Entry {
            path: rel.as_bytes().to_vec(),
            mode,
            id,
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            ino: meta.ino(),
        }
    }

    /// Whether the file at `path` is as it was written: same type, executable bit, size,
    /// modification time and inode (what git's own stat check compares).
    pub fn unchanged_at(&self, path: &Path) -> bool {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return false;
        };
        let kind_ok = match self.mode {
            0o120000 => meta.file_type().is_symlink(),
            0o160000 => meta.is_dir(),
            mode => meta.is_file() && (meta.mode() & 0o111 != 0) == (mode == 0o100755),
        };
        kind_ok
            && (self.mode == 0o160000
                || (meta.size() == self.size
                    && meta.mtime() == self.mtime
                    && meta.mtime_nsec() as u32 == self.mtime_nsec
                    && meta.ino() == self.ino))
    }
}

/// What a release holds: its commit and its entries, in path order.
#[derive(Debug)]
pub struct ReleaseIndex {
    pub commit: Oid,
    /// The tree the release holds (the commit's, or a folder's: `view`); zero when an index of
    /// the first version did not say.
    pub tree: Oid,
    /// What the release holds of its commit, as `View::spec` writes it.
    pub view: String,
    /// Whether the release holds its submodules' files (`deploy.submodules`), or leaves each
    /// submodule an empty folder.
    pub submodules: bool,
    entries: Vec<Entry>,
}

impl ReleaseIndex {
    /// The index of `commit` with `entries`, in any order.
    pub fn new(
        commit: Oid,
        tree: Oid,
        view: String,
        submodules: bool,
        mut entries: Vec<Entry>,
    ) -> ReleaseIndex {
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        ReleaseIndex {
            commit,
            tree,
            view,
            submodules,
            entries,
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether `path` is tracked.
    pub fn contains(&self, path: &[u8]) -> bool {
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .is_ok()
    }

    /// This index for `commit`: without the entries at `removed` (or, for a removed folder,
    /// under it), with `added` (which replace entries at the same paths).
    pub fn changed(
        self,
        commit: Oid,
        tree: Oid,
        removed: &HashSet<&[u8]>,
        added: Vec<Entry>,
    ) -> Self {
        let replaced: HashSet<&[u8]> = added.iter().map(|e| e.path.as_slice()).collect();
        let folders: Vec<Vec<u8>> = removed
            .iter()
            .filter(|path| !self.contains(path))
            .map(|path| [*path, b"/"].concat())
            .collect();
        let keep = |path: &[u8]| {
            !removed.contains(path)
                && !replaced.contains(path)
                && !folders.iter().any(|f| path.starts_with(f))
        };
        let submodules = self.submodules;
        let mut entries: Vec<Entry> = self.entries.into_iter().filter(|e| keep(&e.path)).collect();
        drop(replaced);
        entries.extend(added);
        ReleaseIndex::new(commit, tree, self.view, submodules, entries)
    }

    /// Every folder that holds a tracked entry, at any depth (`a`, `a/b` for `a/b/f`).
    pub fn folders(&self) -> HashSet<Vec<u8>> {
        let mut folders: HashSet<Vec<u8>> = HashSet::new();
        let mut last: &[u8] = b"";
        for entry in &self.entries {
            let Some(end) = entry.path.iter().rposition(|b| *b == b'/') else {
                continue;
            };
            let parent = &entry.path[..end];
            // In path order, a file's folder is most often the one before's.
            if parent == last {
                continue;
            }
            last = parent;
            let mut folder = parent;
            while folders.insert(folder.to_vec()) {
                match folder.iter().rposition(|b| *b == b'/') {
                    Some(end) => folder = &folder[..end],
                    None => break,
                }
            }
        }
        folders
    }

    /// Reads an index written by `save`.
    pub fn load(path: &Path) -> Result<ReleaseIndex> {
        let bytes =
            fs::read(path).with_context(|| format!("failed to read index `{}`", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("index `{}` is unreadable", path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<ReleaseIndex> {
        let v1 = bytes.starts_with(MAGIC_V1);
        if bytes.len() < MAGIC.len() + 20 + 4 + 4 + 4 || !(v1 || bytes.starts_with(MAGIC)) {
            bail!("not an index of this version of ats-hook");
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != sum {
            bail!("its checksum does not match: the file is damaged");
        }
        let mut r = Reader(&body[MAGIC.len()..]);
        let commit = r.oid()?;
        let (tree, view) = if v1 {
            (Oid::ZERO_SHA1, String::new())
        } else {
            let tree = r.oid()?;
            let len = r.u32()? as usize;
            let view = std::str::from_utf8(r.take(len)?)
                .context("its view is not text")?
                .to_string();
            (tree, view)
        };
        let flags = r.u32()?;
        let count = r.u32()? as usize;
        let mut entries = Vec::with_capacity(count.min(body.len() / 60));
        for _ in 0..count {
            let mode = r.u32()?;
            let id = r.oid()?;
            let size = r.u64()?;
            let mtime = r.u64()? as i64;
            let mtime_nsec = r.u32()?;
            let ino = r.u64()?;
            let len = r.u32()? as usize;
            let path = r.take(len)?.to_vec();
            entries.push(Entry {
                path,
                mode,
                id,
                size,
                mtime,
                mtime_nsec,
                ino,
            });
        }
        if !r.0.is_empty() {
            bail!("it has bytes after its last entry");
        }
        if entries.windows(2).any(|w| w[0].path >= w[1].path) {
            bail!("its entries are out of order");
        }
        Ok(ReleaseIndex {
            commit,
            tree,
            view,
            submodules: flags & 1 != 0,
            entries,
        })
    }

    /// Writes the index to `path`, replacing what was there in one `rename(2)`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let size: usize = self.entries.iter().map(|e| 60 + e.path.len()).sum();
        let mut out = Vec::with_capacity(MAGIC.len() + 52 + self.view.len() + size + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.commit.as_bytes());
        out.extend_from_slice(self.tree.as_bytes());
        out.extend_from_slice(&(self.view.len() as u32).to_le_bytes());
        out.extend_from_slice(self.view.as_bytes());
        out.extend_from_slice(&u32::from(self.submodules).to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.mode.to_le_bytes());
            out.extend_from_slice(e.id.as_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&e.mtime.to_le_bytes());
            out.extend_from_slice(&e.mtime_nsec.to_le_bytes());
            out.extend_from_slice(&e.ino.to_le_bytes());
            out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.path);
        }
        let sum = crc32fast::hash(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        let tmp = path.with_extension("new");
        fs::write(&tmp, &out).with_context(|| format!("failed to write `{}`", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("failed to write index `{}`", path.display()))
    }
}

/// Reads fixed-size fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("it ends in the middle of an entry");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn oid(&mut self) -> Result<Oid> {
        Ok(Oid::from_bytes(self.take(20)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, n: u8) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            mode: 0o100644,
            id: Oid::from_bytes(&[n; 20]).unwrap(),
            size: n as u64,
            mtime: -(n as i64),
            mtime_nsec: 999_999_999,
            ino: u64::MAX - n as u64,
        }
    }

    #[test]
    fn an_index_reads_back_as_written_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let commit = Oid::from_bytes(&[7; 20]).unwrap();
        let tree = Oid::from_bytes(&[8; 20]).unwrap();
        let index = ReleaseIndex::new(
            commit,
            tree,
            "backend\nlibs".into(),
            true,
            vec![entry("b/c", 2), entry("a", 1), entry("b/d/e", 3)],
        );
        index.save(&path).unwrap();
        let back = ReleaseIndex::load(&path).unwrap();
        assert_eq!(back.commit, commit);
        assert_eq!(back.tree, tree);
        assert_eq!(back.view, "backend\nlibs");
        assert!(back.submodules);
        assert_eq!(back.entries(), index.entries());
        assert_eq!(
            back.entries()
                .iter()
                .map(|e| &e.path[..])
                .collect::<Vec<_>>(),
            [&b"a"[..], b"b/c", b"b/d/e"]
        );
        assert!(back.contains(b"b/c") && !back.contains(b"b"));
        let mut folders: Vec<_> = back.folders().into_iter().collect();
        folders.sort();
        assert_eq!(folders, [b"b".to_vec(), b"b/d".to_vec()]);

        let bytes = fs::read(&path).unwrap();
        for cut in [0, 8, bytes.len() / 2, bytes.len() - 1] {
            fs::write(&path, &bytes[..cut]).unwrap();
            assert!(ReleaseIndex::load(&path).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let err = format!("{:#}", ReleaseIndex::load(&path).unwrap_err());
        assert!(err.contains("damaged"), "{err}");
        // git's own index format, as older versions of ats-hook wrote it.
        fs::write(&path, b"DIRC\x00\x00\x00\x02\x00\x00\x00\x00").unwrap();
        let err = format!("{:#}", ReleaseIndex::load(&path).unwrap_err());
        assert!(err.contains("not an index of this version"), "{err}");
        // The first version: no tree, no view; read as the whole tree of its commit.
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(commit.as_bytes());
        v1.extend_from_slice(&0u32.to_le_bytes());
        v1.extend_from_slice(&0u32.to_le_bytes());
        let sum = crc32fast::hash(&v1);
        v1.extend_from_slice(&sum.to_le_bytes());
        fs::write(&path, &v1).unwrap();
        let back = ReleaseIndex::load(&path).unwrap();
        assert_eq!(
            (back.commit, back.tree, back.view.as_str()),
            (commit, Oid::ZERO_SHA1, "")
        );
        assert!(back.entries().is_empty());
    }

    #[test]
    fn a_changed_index_drops_and_replaces_entries() {
        let commit = Oid::from_bytes(&[1; 20]).unwrap();
        let index = ReleaseIndex::new(
            commit,
            Oid::ZERO_SHA1,
            String::new(),
            false,
            ["a", "b", "c", "d/x", "d/y/z", "dx"]
                .iter()
                .zip(1..)
                .map(|(path, n)| entry(path, n))
                .collect(),
        );
        // `d` is no entry but a folder: what is under it goes too.
        let removed: HashSet<&[u8]> = [&b"b"[..], b"d"].into_iter().collect();
        let next = Oid::from_bytes(&[2; 20]).unwrap();
        let tree = Oid::from_bytes(&[3; 20]).unwrap();
        let changed = index.changed(next, tree, &removed, vec![entry("c", 9), entry("0", 4)]);
        assert_eq!((changed.commit, changed.tree), (next, tree));
        let got: Vec<_> = changed
            .entries()
            .iter()
            .map(|e| (e.path.clone(), e.size))
            .collect();
        assert_eq!(
            got,
            [
                (b"0".to_vec(), 4),
                (b"a".to_vec(), 1),
                (b"c".to_vec(), 9),
                (b"dx".to_vec(), 6)
            ]
        );
    }
}
