//! Folder stamps: the modification times of a release's folders when ats-hook last left the
//! release holding its commit alone.
//!
//! Adding, removing or renaming an entry changes its folder's modification time, so a folder
//! whose time still equals its stamp holds no entry ats-hook did not put there. When a release
//! is built from an old one, only the folders whose time moved are listed to find untracked
//! files: the cost follows what changed, not the size of the tree (git's untracked cache rests
//! on the same rule). Without stamps (an older release, a damaged file), every folder is listed.
//!
//! File times are coarse (the kernel's clock tick, a few milliseconds; a whole second or two on
//! some filesystems): an entry added in the same tick as the stamp would not move it. So a
//! folder changed less than the racy window before its stamp is taken is left unstamped, and
//! listed next time. The window is the filesystem's real granularity, probed once per deploy
//! root (`racy_window`) and kept in `.ats-hook/timestamps.json`: two ticks, at least 10 ms.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};

/// A folder's modification time and inode, as `lstat` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    seconds: i64,
    nanoseconds: i64,
    inode: u64,
}

/// Stamps by folder, relative to the release (`""` is the release itself).
#[derive(Debug, Default)]
pub struct Stamps(HashMap<Vec<u8>, Stamp>);

/// The window when the granularity cannot be measured: as coarse as any filesystem's (FAT's 2 s).
pub const RACY: std::time::Duration = std::time::Duration::from_secs(2);
/// The smallest window, whatever the probe finds.
const MIN_RACY: std::time::Duration = std::time::Duration::from_millis(10);
/// How long the probe may take: a filesystem of whole seconds shows its tick within this.
const PROBE_FOR: std::time::Duration = std::time::Duration::from_millis(4500);

/// What the probe found, for the filesystem of `releases/`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Granularity {
    /// The filesystem's device number: a deploy root moved elsewhere is probed again.
    device: u64,
    nanoseconds: u64,
}

/// How recent a folder's change may be for its stamp to be trusted, on the filesystem that
/// holds the releases: twice its timestamps' granularity (measured once, then remembered).
pub fn racy_window(layout: &crate::state::layout::Layout) -> std::time::Duration {
    let releases = layout.releases();
    let Ok(device) = fs::metadata(&releases).map(|m| m.dev()) else {
        return RACY;
    };
    let file = layout.state().join("timestamps.json");
    let known = fs::read(&file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Granularity>(&bytes).ok())
        .filter(|g| g.device == device);
    let granularity = match known {
        Some(known) => known.nanoseconds,
        None => match probe(&releases) {
            Some(nanoseconds) => {
                let found = Granularity {
                    device,
                    nanoseconds,
                };
                if let Ok(json) = serde_json::to_vec(&found) {
                    let _ = crate::sys::files::write_atomically(&file, &json, 0o600);
                }
                nanoseconds
            }
            None => return RACY,
        },
    };
    (std::time::Duration::from_nanos(granularity) * 2).clamp(MIN_RACY, RACY)
}

/// The smallest step between the modification times a folder of `dir` takes as entries are
/// added to it, in nanoseconds; `None` when no two differ within `PROBE_FOR`.
fn probe(dir: &Path) -> Option<u64> {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let _ = fs::remove_dir_all(&probe);
    fs::create_dir(&probe).ok()?;
    let started = std::time::Instant::now();
    let mut times: Vec<(i64, i64)> = Vec::new();
    let mut steps: Vec<u64> = Vec::new();
    let mut n = 0u32;
    while steps.len() < 3 && started.elapsed() < PROBE_FOR {
        n += 1;
        if fs::write(probe.join(n.to_string()), b"").is_err() {
            break;
        }
        let Some(stamp) = stamp_of(&probe) else { break };
        let time = (stamp.seconds, stamp.nanoseconds);
        if let Some(&last) = times.last() {
            if time != last {
                let step = (time.0 - last.0) as i128 * 1_000_000_000 + (time.1 - last.1) as i128;
                if step > 0 {
                    steps.push(step as u64);
                }
            }
        }
        times.push(time);
        // Past the first few, a pause: the tick is measured, not the speed of `write`.
        if n > 8 {
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }
    let _ = fs::remove_dir_all(&probe);
    // The first step may be a partial tick: the smallest is the tick, or a multiple of it.
    steps.into_iter().min()
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    let meta = fs::symlink_metadata(path).ok()?;
    meta.is_dir().then(|| Stamp {
        seconds: meta.mtime(),
        nanoseconds: meta.mtime_nsec(),
        inode: meta.ino(),
    })
}

impl Stamps {
    /// Stamps `folders` (and the release itself) of `release` as they are now, and writes them
    /// to `file` (replacing it whole).
    pub fn record<'a>(
        release: &Path,
        folders: impl Iterator<Item = &'a [u8]>,
        file: &Path,
        racy: std::time::Duration,
    ) -> Result<()> {
        let mut text = Vec::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let settled = now.saturating_sub(racy);
        for folder in std::iter::once(&b""[..]).chain(folders) {
            // A name with a newline cannot be written on a line: left unstamped, it is listed.
            if folder.contains(&b'\n') {
                continue;
            }
            let path = release.join(std::ffi::OsStr::from_bytes(folder));
            let stamp = stamp_of(&path).filter(|stamp| {
                let changed = std::time::Duration::new(
                    stamp.seconds.max(0) as u64,
                    stamp.nanoseconds.clamp(0, 999_999_999) as u32,
                );
                changed < settled
            });
            if let Some(stamp) = stamp {
                write!(
                    text,
                    "{} {} {} ",
                    stamp.seconds, stamp.nanoseconds, stamp.inode
                )?;
                text.extend_from_slice(folder);
                text.push(b'\n');
            }
        }
        let tmp = file.with_extension("new");
        fs::write(&tmp, &text).with_context(|| format!("failed to write `{}`", tmp.display()))?;
        fs::rename(&tmp, file).with_context(|| format!("failed to write `{}`", file.display()))
    }

    /// Stamps release `id`, just written whole (its folders all changed a moment ago), once
    /// they can be trusted: when the filesystem's racy window is at most `longest`, after
    /// sleeping it out; returns whether it did.
    pub fn record_when_settled(
        layout: &crate::state::layout::Layout,
        id: &str,
        longest: std::time::Duration,
    ) -> Result<bool> {
        let racy = racy_window(layout);
        if racy > longest {
            return Ok(false);
        }
        std::thread::sleep(racy);
        let index = crate::release::index::ReleaseIndex::load(&layout.index_file(id))?;
        Stamps::record(
            &layout.release(id),
            index.folders().iter().map(Vec::as_slice),
            &layout.stamps_file(id),
            racy,
        )?;
        Ok(true)
    }

    /// The stamps in `file`; `None` when there are none to trust.
    pub fn load(file: &Path) -> Option<Stamps> {
        let bytes = fs::read(file).ok()?;
        let mut stamps = HashMap::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let mut parts = line.splitn(4, |b| *b == b' ');
            let mut number =
                || -> Option<i64> { std::str::from_utf8(parts.next()?).ok()?.parse().ok() };
            let (seconds, nanoseconds, inode) = (number()?, number()?, number()?);
            let folder = parts.next()?.to_vec();
            stamps.insert(
                folder,
                Stamp {
                    seconds,
                    nanoseconds,
                    inode: inode as u64,
                },
            );
        }
        Some(Stamps(stamps))
    }

    /// Whether `folder` of `release` may hold entries it did not hold when stamped.
    pub fn moved(&self, release: &Path, folder: &[u8]) -> bool {
        let Some(stamp) = self.0.get(folder) else {
            return true;
        };
        stamp_of(&release.join(std::ffi::OsStr::from_bytes(folder))) != Some(*stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets a folder's time back, as if it last changed a while ago.
    fn age(path: &Path) {
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::open(path).unwrap().set_modified(old).unwrap();
    }

    #[test]
    fn a_folder_moves_when_an_entry_is_added_removed_or_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        fs::create_dir_all(release.join("a/b")).unwrap();
        fs::write(release.join("a/b/f"), "x").unwrap();
        let file = dir.path().join("stamps");
        let folders: Vec<&[u8]> = vec![b"a", b"a/b"];
        // Just changed: not stamped, so listed.
        Stamps::record(&release, folders.iter().copied(), &file, RACY).unwrap();
        assert!(Stamps::load(&file).unwrap().moved(&release, b"a/b"));
        for folder in ["", "a", "a/b"] {
            age(&release.join(folder));
        }
        Stamps::record(&release, folders.iter().copied(), &file, RACY).unwrap();
        let stamps = Stamps::load(&file).unwrap();
        assert!(!stamps.moved(&release, b""));
        assert!(!stamps.moved(&release, b"a"));
        assert!(!stamps.moved(&release, b"a/b"));
        assert!(stamps.moved(&release, b"never/stamped"));

        // Writing into a tracked file moves nothing: the stat pass catches that.
        fs::write(release.join("a/b/f"), "changed").unwrap();
        assert!(!stamps.moved(&release, b"a/b"));
        // A new entry, a removed one, a renamed one: each moves its folder.
        fs::write(release.join("a/b/untracked"), "").unwrap();
        assert!(stamps.moved(&release, b"a/b"));
        age(&release.join("a/b"));
        Stamps::record(&release, folders.iter().copied(), &file, RACY).unwrap();
        let stamps = Stamps::load(&file).unwrap();
        fs::rename(release.join("a/b/untracked"), release.join("a/b/renamed")).unwrap();
        assert!(stamps.moved(&release, b"a/b"));
        assert!(!stamps.moved(&release, b"a"));
        fs::remove_dir_all(release.join("a/b")).unwrap();
        assert!(stamps.moved(&release, b"a"));
        assert!(stamps.moved(&release, b"a/b"));
    }

    #[test]
    fn the_racy_window_is_measured_once_per_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::state::layout::Layout::new(dir.path());
        layout.create().unwrap();
        let window = racy_window(&layout);
        assert!((MIN_RACY..=RACY).contains(&window), "{window:?}");
        let file = layout.state().join("timestamps.json");
        let found: Granularity = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert!(found.nanoseconds > 0 && found.nanoseconds <= 2_000_000_000);
        // Remembered: a value written there is what the next deploy uses.
        let coarse = Granularity {
            device: found.device,
            nanoseconds: 400_000_000,
        };
        fs::write(&file, serde_json::to_vec(&coarse).unwrap()).unwrap();
        assert_eq!(racy_window(&layout), std::time::Duration::from_millis(800));
        // Another filesystem (a device number that is not this one's) is probed again.
        let moved = Granularity {
            device: found.device + 1,
            nanoseconds: 400_000_000,
        };
        fs::write(&file, serde_json::to_vec(&moved).unwrap()).unwrap();
        racy_window(&layout);
        let again: Granularity = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(again.device, found.device);
        assert!(!layout
            .releases()
            .join(format!(".probe-{}", std::process::id()))
            .exists());
    }

    #[test]
    fn damaged_stamps_are_not_trusted_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stamps");
        fs::write(&file, "1 2 3 a\nnot a stamp\n").unwrap();
        assert!(Stamps::load(&file).is_none());
        assert!(Stamps::load(&dir.path().join("missing")).is_none());
    }
}
