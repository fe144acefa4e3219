//! Root acting on a deploy user's files: only as that user, or through folders that only root
//! can change, opened without following symlinks.
//!
//! The deploy user may be hostile (a pusher's code ran as it), and it owns its home, the bare
//! repository and the deploy root: anything there may be a symlink to `/etc/shadow` or
//! `/root/.ssh`, swapped in between a check and a use. So every command root may run goes
//! through this module before it touches such a file, in one of two ways:
//! - it becomes the user (`act_as_owner_of`, for good in this process; `run_as`, in a child
//!   process when root still has work to do afterwards);
//! - or, for the little that root itself must do (a new deploy root's folder in `/srv`, giving
//!   a tree to the user, `~/.ssh/authorized_keys`), it holds each folder open and works
//!   relative to it: `openat` with `O_NOFOLLOW`, files created with `O_EXCL`, `fchown`,
//!   `fchmod`, `renameat`. It follows a path only through folders that no one but root can
//!   change.
//!
//! Nothing outside this module calls `chown` or writes into a user's tree as root; a test
//! reads the sources of the root-run commands to keep it so.

mod user_dir;

pub use user_dir::UserDir;

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, User};

/// Whether this process has root's rights over files.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn user_by_uid(uid: u32) -> Result<User> {
    User::from_uid(Uid::from_raw(uid))
        .with_context(|| format!("failed to look up uid {uid}"))?
        .with_context(|| format!("no user has uid {uid} on this machine"))
}

/// The user other than root that owns `path` or one of the folders above it (the deepest one),
/// read without following the path's last symlink: the user who could have changed what the
/// path leads to. `None` when root owns all of it, or nothing is there.
pub fn other_owner(path: &Path) -> Result<Option<User>> {
    let path = std::path::absolute(path)
        .with_context(|| format!("failed to resolve `{}`", path.display()))?;
    let mut owner = None;
    let mut prefix = PathBuf::new();
    for part in path.components() {
        prefix.push(part);
        let Ok(meta) = std::fs::symlink_metadata(&prefix) else {
            break;
        };
        if meta.uid() != 0 {
            owner = Some(meta.uid());
        }
        if meta.file_type().is_symlink() {
            // Where it leads counts too: its owner is the one who can change it.
            if let Ok(target) = std::fs::metadata(&prefix) {
                if target.uid() != 0 {
                    owner = Some(target.uid());
                }
            }
        }
    }
    owner.map(user_by_uid).transpose()
}

/// When this process is root and another user owns any of `paths` (see `other_owner`):
/// becomes that user for good, before anything there is opened. Returns who it became.
pub fn act_as_owner_of(paths: &[&Path]) -> Result<Option<User>> {
    if !is_root() {
        return Ok(None);
    }
    for path in paths {
        if let Some(user) = other_owner(path)? {
            become_user(&user)?;
            tracing::debug!(user = %user.name, "acting as the owner of `{}`", path.display());
            return Ok(Some(user));
        }
    }
    Ok(None)
}

/// Drops this process's root rights for `user`'s, with the user's groups, irrevocably.
pub fn become_user(user: &User) -> Result<()> {
    let name = CString::new(user.name.as_bytes()).context("a user name holds a NUL")?;
    nix::unistd::initgroups(&name, user.gid)
        .with_context(|| format!("failed to take the groups of `{}`", user.name))?;
    nix::unistd::setresgid(user.gid, user.gid, user.gid)
        .with_context(|| format!("failed to take the group of `{}`", user.name))?;
    nix::unistd::setresuid(user.uid, user.uid, user.uid)
        .with_context(|| format!("failed to become `{}`", user.name))?;
    if nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        bail!("still root after becoming `{}`", user.name);
    }
    // What child processes read to know who they are (still one thread: commands drop first).
    std::env::set_var("HOME", &user.dir);
    std::env::set_var("USER", &user.name);
    std::env::set_var("LOGNAME", &user.name);
    Ok(())
}

/// Runs this binary with `args` as `user`, in a child process with no root rights and the
/// user's own environment names, its output going where this process's goes. `input`, when
/// given, is its standard input.
pub fn run_as(user: &User, args: &[OsString], input: Option<&[u8]>) -> Result<ExitStatus> {
    let exe = std::env::current_exe().context("failed to find the ats-hook binary")?;
    let mut command = std::process::Command::new(&exe);
    // std clears the supplementary groups before it sets the ids.
    command
        .args(args)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .current_dir("/")
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env_remove("SUDO_COMMAND")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to run `{}` as `{}`", exe.display(), user.name))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .with_context(|| format!("failed to pass input to the process of `{}`", user.name))?;
    }
    child
        .wait()
        .with_context(|| format!("failed to wait for the process of `{}`", user.name))
}

/// Whether only root can change what `meta`'s folder holds: root owns it and no one else may
/// write to it, or it is sticky (`/tmp`: others' entries in it cannot be replaced).
fn root_controlled(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && (meta.mode() & 0o022 == 0 || meta.mode() & 0o1000 != 0)
}

/// Where `path` is, for root: its real path, refused unless every folder above it is one only
/// root can change (so nobody can make the path lead elsewhere between a check and a use).
/// `path` itself may be missing; then so may folders above it, and the nearest one that is
/// there must be root's too.
pub fn trusted_path(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("failed to resolve `{}`", path.display()))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        let Some(parent) = existing.parent() else {
            break;
        };
        rest.push(existing.file_name().unwrap_or_default().to_os_string());
        existing = parent;
    }
    let real = existing
        .canonicalize()
        .with_context(|| format!("failed to resolve `{}`", existing.display()))?;
    for ancestor in real.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)
            .with_context(|| format!("failed to read `{}`", ancestor.display()))?;
        if !root_controlled(&meta) {
            bail!(
                "`{}` is in `{}`, which someone other than root can change: root will not follow a path through it; choose a path whose folders are root's",
                path.display(),
                ancestor.display()
            );
        }
    }
    let mut out = real;
    if !rest.is_empty() {
        let meta = std::fs::metadata(&out)
            .with_context(|| format!("failed to read `{}`", out.display()))?;
        if !root_controlled(&meta) {
            bail!(
                "cannot create `{}` as root: `{}` belongs to someone else; create it as its owner",
                path.display(),
                out.display()
            );
        }
    }
    for part in rest.iter().rev() {
        out.push(part);
    }
    Ok(out)
}

/// Creates the folders of `path` that are missing (mode 0755), as root, and gives the last one
/// to `user`. `path` must come from `trusted_path`.
pub fn create_folder_for(path: &Path, user: &User) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(path)
        .with_context(|| format!("failed to create `{}`", path.display()))?;
    let dir = open_dir(None, path)?;
    nix::unistd::fchown(&dir, Some(user.uid), Some(user.gid))
        .with_context(|| format!("failed to give `{}` to `{}`", path.display(), user.name))
}

fn open_dir(at: Option<&OwnedFd>, name: &Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(dir) => nix::fcntl::openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn is_file(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// What giving a tree to a user found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chowned {
    /// Entries whose owner changed (or would).
    pub changed: usize,
    /// Files with more than one name, left as they are: the other name may be anyone's.
    pub skipped_links: Vec<PathBuf>,
}

/// The folder `path` held open, reached from `/` one folder at a time without following a
/// symlink (its real path is taken first): whoever may change the folders on the way can make
/// it fail, never lead it elsewhere.
pub fn open_folder(path: &Path) -> Result<OwnedFd> {
    let real = path
        .canonicalize()
        .with_context(|| format!("failed to resolve `{}`", path.display()))?;
    let mut dir = open_dir(None, Path::new("/")).context("failed to open `/`")?;
    for part in real.components().skip(1) {
        dir = open_dir(Some(&dir), Path::new(part.as_os_str())).map_err(|err| match err {
            Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!(
                "`{}` changed while ats-hook opened it (a symlink or a file where a folder was); refusing to follow it",
                path.display()
            ),
            err => anyhow::Error::new(err).context(format!("failed to open `{}`", path.display())),
        })?;
    }
    Ok(dir)
}

/// The owner of an open folder.
pub fn owner_of(dir: &OwnedFd) -> Result<u32> {
    Ok(nix::sys::stat::fstat(dir)
        .context("failed to stat a folder")?
        .st_uid)
}

/// Gives everything under the folder `path` to `uid`/`gid`, walking with each folder held
/// open (from `open_folder`) and never following a symlink (a symlink itself changes owner;
/// its target never does). With `dry_run`, only counts what would change.
pub fn chown_tree(path: &Path, uid: u32, gid: u32, dry_run: bool) -> Result<Chowned> {
    let top = open_folder(path)?;
    let mut found = Chowned::default();
    give(
        &top,
        path,
        Uid::from_raw(uid),
        Gid::from_raw(gid),
        dry_run,
        &mut found,
    )?;
    Ok(found)
}

fn give(
    dir: &OwnedFd,
    path: &Path,
    uid: Uid,
    gid: Gid,
    dry_run: bool,
    found: &mut Chowned,
) -> Result<()> {
    let stat = nix::sys::stat::fstat(dir)
        .with_context(|| format!("failed to stat `{}`", path.display()))?;
    if stat.st_uid != uid.as_raw() || stat.st_gid != gid.as_raw() {
        found.changed += 1;
        if !dry_run {
            nix::unistd::fchown(dir, Some(uid), Some(gid))
                .with_context(|| format!("failed to change the owner of `{}`", path.display()))?;
        }
    }
    let listing = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("failed to list `{}`", path.display()))?;
    let mut names = Vec::new();
    for entry in listing {
        let entry = entry.with_context(|| format!("failed to list `{}`", path.display()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    for name in names {
        let child_path = path.join(&name);
        let name = Path::new(&name);
        let stat = match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue,
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("failed to stat `{}`", child_path.display()))
            }
        };
        if is_dir(&stat) {
            match open_dir(Some(dir), name) {
                Ok(child) => give(&child, &child_path, uid, gid, dry_run, found)?,
                // Swapped for something else since: not followed.
                Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) => continue,
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("failed to open `{}`", child_path.display()))
                }
            }
            continue;
        }
        if stat.st_uid == uid.as_raw() && stat.st_gid == gid.as_raw() {
            continue;
        }
        if is_file(&stat) && stat.st_nlink > 1 {
            found.skipped_links.push(child_path);
            continue;
        }
        found.changed += 1;
        if !dry_run {
            match nix::unistd::fchownat(
                dir,
                name,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("failed to change the owner of `{}`", child_path.display())
                    })
                }
            }
        }
    }
    Ok(())
}
