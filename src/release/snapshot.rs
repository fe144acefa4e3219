//! Releases as btrfs subvolumes (`deploy.snapshot_releases`). On a deploy root on btrfs, a
//! release checked out whole is made a subvolume, so that a push that finds no old release to
//! build from (a new server's first pushes, a burst of them) builds from a snapshot of the live
//! release: the snapshot takes milliseconds whatever the size of the tree, shares every block
//! with the live release until one is written, and the release is then brought to its commit as
//! a reused old release is (`recycle::update`), writing only what the push changed and removing
//! what the app wrote since. No spare release is prepared meanwhile. Snapshots are made with the
//! `btrfs` command (btrfs-progs); without it, on another filesystem, or for a live release that
//! is a plain folder, releases are plain folders and the spare release serves.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};

use crate::config::DeploySection;
use crate::state::layout::Layout;
use crate::sys::process::Cmd;

/// The snapshot's folder in `releases/` (and name in `.ats-hook/index/`) until its release
/// takes it; never a release, never live.
pub const SNAPSHOT: &str = ".snapshot";

/// The inode number of the root folder of every btrfs subvolume (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INODE: u64 = 256;

/// Whether `path` is on a btrfs.
pub fn on_btrfs(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC};
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// Whether `path` is the root folder of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir() && meta.ino() == SUBVOLUME_ROOT_INODE)
        && on_btrfs(path)
}

/// Whether the `btrfs` command runs here (asked once per process).
fn command_found() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| Cmd::new("btrfs").arg("--version").read().is_ok())
}

fn btrfs(args: &[&std::ffi::OsStr]) -> Result<()> {
    Cmd::new("btrfs").args(args).read().map(|_| ())
}

/// Creates the folder of a release checked out whole, which must not exist: a subvolume when
/// `subvolume` and its parent is on btrfs, else (or when that fails) a plain folder.
pub fn new_release_folder(dir: &Path, subvolume: bool) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if subvolume && on_btrfs(parent) && command_found() && !dir.exists() {
        let created = btrfs(&["subvolume".as_ref(), "create".as_ref(), dir.as_os_str()]);
        match created {
            Ok(()) => return Ok(()),
            Err(err) => {
                tracing::debug!("release `{}` is a plain folder: {err:#}", dir.display())
            }
        }
    }
    fs::create_dir(dir).with_context(|| format!("failed to create release `{}`", dir.display()))
}

/// Whether a push's release can be built from a snapshot of release `live`: the config wants
/// it (`snapshot_releases`, with `recycle_releases`), `live` is a subvolume, `btrfs` runs.
pub fn serves(deploy: &DeploySection, layout: &Layout, live: &str) -> bool {
    deploy.recycle_releases
        && deploy.snapshot_releases
        && is_subvolume(&layout.release(live))
        && command_found()
}

/// Makes `releases/.snapshot` a snapshot of release `live`, with a copy of its index and
/// stamps, for `recycle::update` to build the new release from (replacing what a killed run
/// left there).
pub fn take(layout: &Layout, live: &str) -> Result<()> {
    discard(layout)?;
    let started = std::time::Instant::now();
    let (from, to) = (layout.release(live), layout.release(SNAPSHOT));
    btrfs(&[
        "subvolume".as_ref(),
        "snapshot".as_ref(),
        from.as_os_str(),
        to.as_os_str(),
    ])
    .with_context(|| format!("failed to snapshot release `{live}`"))?;
    tracing::debug!("snapshot of `{live}` made in {:?}", started.elapsed());
    let index = layout.index_file(SNAPSHOT);
    fs::copy(layout.index_file(live), &index)
        .with_context(|| format!("failed to copy the index of `{live}`"))?;
    // Without stamps, the update lists every folder instead: slower, as right.
    let _ = fs::copy(layout.stamps_file(live), layout.stamps_file(SNAPSHOT));
    Ok(())
}

/// Removes what a snapshot left unused (a run killed before its release took it).
pub fn discard(layout: &Layout) -> Result<()> {
    let dir = layout.release(SNAPSHOT);
    if fs::symlink_metadata(&dir).is_ok() {
        remove_folder(&dir)?;
    }
    let _ = fs::remove_file(layout.index_file(SNAPSHOT));
    let _ = fs::remove_file(layout.stamps_file(SNAPSHOT));
    Ok(())
}

/// Removes a release's folder: a subvolume in one call where this user may delete subvolumes
/// (root, or a btrfs mounted with `user_subvol_rm_allowed`), else file by file, which leaves
/// an empty subvolume that `rmdir(2)` then removes.
pub fn remove_folder(dir: &Path) -> Result<()> {
    if is_subvolume(dir)
        && command_found()
        && btrfs(&["subvolume".as_ref(), "delete".as_ref(), dir.as_os_str()]).is_ok()
    {
        return Ok(());
    }
    fs::remove_dir_all(dir).with_context(|| format!("failed to remove `{}`", dir.display()))
}
