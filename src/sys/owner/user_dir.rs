//! A deploy user's folder held open by root: reads and writes relative to it, never
//! following a symlink, new files created exclusively and renamed into place.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use nix::unistd::User;

use super::{is_file, is_root, open_dir, trusted_path};

/// A folder of a user's, held open: what is read or written in it is read or written there,
/// whatever its path leads to by then.
pub struct UserDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl UserDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `user`'s home folder, refused unless the folders above it are root's alone and the
    /// home is the user's (or root's).
    pub fn home(user: &User) -> Result<UserDir> {
        let path = trusted_path(&user.dir)?;
        let fd = open_dir(None, &path).map_err(|err| match err {
            Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!(
                "the home folder `{}` of `{}` is not a folder",
                path.display(),
                user.name
            ),
            err => anyhow::Error::new(err).context(format!(
                "failed to open the home folder `{}`",
                path.display()
            )),
        })?;
        let dir = UserDir { fd, path };
        dir.owned_by(user)?;
        Ok(dir)
    }

    fn owned_by(&self, user: &User) -> Result<FileStat> {
        let stat = nix::sys::stat::fstat(&self.fd)
            .with_context(|| format!("failed to stat `{}`", self.path.display()))?;
        if stat.st_uid != user.uid.as_raw() && stat.st_uid != 0 {
            bail!(
                "`{}` belongs to uid {}, not to `{}`; refusing to write there",
                self.path.display(),
                stat.st_uid,
                user.name
            );
        }
        Ok(stat)
    }

    /// Whether this folder holds an entry `name` (of any kind, a symlink too).
    pub fn has(&self, name: &str) -> bool {
        nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }

    /// The private folder `name` in this one (created, mode 0700, the user's), refused when it
    /// is a symlink or not a folder.
    pub fn private_folder(&self, name: &str, user: &User) -> Result<UserDir> {
        let path = self.path.join(name);
        let fd = match open_dir(Some(&self.fd), Path::new(name)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700))
                    .with_context(|| format!("failed to create `{}`", path.display()))?;
                open_dir(Some(&self.fd), Path::new(name))
                    .with_context(|| format!("failed to open `{}`", path.display()))?
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => bail!(
                "`{}` is a symlink or not a folder: ats-hook writes only into a real folder of the user's; remove it (`rm {}`) and run again",
                path.display(),
                path.display()
            ),
            Err(err) => {
                return Err(err).with_context(|| format!("failed to open `{}`", path.display()))
            }
        };
        let dir = UserDir { fd, path };
        dir.owned_by(user)?;
        nix::unistd::fchown(&dir.fd, Some(user.uid), Some(user.gid))
            .or_else(|err| if is_root() { Err(err) } else { Ok(()) })
            .with_context(|| {
                format!("failed to give `{}` to `{}`", dir.path.display(), user.name)
            })?;
        nix::sys::stat::fchmod(&dir.fd, Mode::from_bits_truncate(0o700))
            .with_context(|| format!("failed to make `{}` private", dir.path.display()))?;
        Ok(dir)
    }

    /// The content of the file `name`, `None` when there is none. Refused when it is a symlink,
    /// not a plain file, has other names (a hard link), or is someone else's.
    pub fn read(&self, name: &str, user: &User) -> Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => bail!(
                "`{}` is a symlink: ats-hook reads and writes only a real file there; remove it (`rm {}`) and run again",
                path.display(),
                path.display()
            ),
            Err(err) => {
                return Err(err).with_context(|| format!("failed to open `{}`", path.display()))
            }
        };
        let stat = nix::sys::stat::fstat(&fd)
            .with_context(|| format!("failed to stat `{}`", path.display()))?;
        if !is_file(&stat) {
            bail!(
                "`{}` is not a plain file; refusing to read it",
                path.display()
            );
        }
        if stat.st_nlink > 1 {
            bail!(
                "`{}` has {} names (a hard link): refusing to read or replace it; remove it and run again",
                path.display(),
                stat.st_nlink
            );
        }
        if stat.st_uid != user.uid.as_raw() && stat.st_uid != 0 {
            bail!(
                "`{}` belongs to uid {}, not to `{}`; refusing to read it",
                path.display(),
                stat.st_uid,
                user.name
            );
        }
        let mut content = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut content)
            .with_context(|| format!("failed to read `{}`", path.display()))?;
        Ok(Some(content))
    }

    /// Replaces the file `name` whole with `content` (mode `mode`, the user's): written to a
    /// new file created exclusively beside it, synced, then renamed over it.
    pub fn replace(&self, name: &str, content: &[u8], mode: u32, user: &User) -> Result<()> {
        let path = self.path.join(name);
        let tmp = format!(".{name}.ats-hook-{}", std::process::id());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode_bits = Mode::from_bits_truncate(mode);
        let fd = match nix::fcntl::openat(&self.fd, tmp.as_str(), flags, mode_bits) {
            Err(Errno::EEXIST) => {
                // Left by a run that was killed: a name, never followed.
                let _ = nix::unistd::unlinkat(
                    &self.fd,
                    tmp.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                nix::fcntl::openat(&self.fd, tmp.as_str(), flags, mode_bits)
            }
            other => other,
        }
        .with_context(|| format!("failed to create `{}`", self.path.join(&tmp).display()))?;
        let written = (|| -> Result<()> {
            nix::unistd::fchown(&fd, Some(user.uid), Some(user.gid)).or_else(|err| {
                if is_root() {
                    Err(err)
                } else {
                    Ok(())
                }
            })?;
            nix::sys::stat::fchmod(&fd, mode_bits)?;
            let mut file = std::fs::File::from(fd);
            file.write_all(content)?;
            file.sync_all()?;
            nix::fcntl::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            nix::unistd::fsync(self.fd.as_fd())?;
            Ok(())
        })();
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                &self.fd,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written.with_context(|| format!("failed to replace `{}`", path.display()))
    }
}
