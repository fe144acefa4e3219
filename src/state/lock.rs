//! The deploy lock: a kernel `flock(2)` on `<root>/.ats-hook/lock`.
//!
//! The kernel drops the lock when its holder dies, however it dies, so there are no stale locks.
//! While held, the file records who holds it (pid, commit, release, since when), so a waiting
//! push can tell its pusher what it waits for. A clean finish empties the file; finding it
//! non-empty when the lock is taken means the previous deploy was killed mid-way.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub commit: String,
    pub git_ref: String,
    pub release: String,
    pub since: String,
    pub pusher: String,
    /// The run's record, kept here when the history could not take it (a full disk), for the
    /// next run to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrecorded: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = crate::sys::output::short(&self.commit);
        write!(
            f,
            "pid {} (deploying {short} of `{}` for {}, since {})",
            self.pid, self.git_ref, self.pusher, self.since
        )
    }
}

pub struct DeployLock {
    file: Flock<File>,
    /// What the file held when the lock was taken: a deploy that never finished.
    pub interrupted: Option<Holder>,
}

/// How often a waiting push tries the lock again.
const POLL: Duration = Duration::from_millis(100);
/// How often a waiting push repeats who it waits for.
const REMIND: Duration = Duration::from_secs(30);

fn open(path: &Path) -> Result<File> {
    if path.is_dir() {
        bail!(
            "the lock file `{}` is a folder: remove it (`rmdir {}`), and ats-hook makes its lock file there again",
            path.display(),
            path.display()
        );
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("failed to open lock file `{}`", path.display()))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// Replaces what the lock file says with `me`, so that a kill at any instant leaves the old
/// holder or the new one, never an empty or torn file (which the next run would take for a
/// lock nobody died holding): one write over the old text, padded with spaces to cover it,
/// then the file cut to the new text.
fn write_holder(file: &mut File, me: &Holder) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let text = serde_json::to_string(me).context("failed to encode the lock holder")?;
    let old = file.metadata()?.len() as usize;
    let mut padded = text.into_bytes();
    let len = padded.len();
    padded.resize(len.max(old), b' ');
    file.write_all_at(&padded, 0)?;
    file.set_len(len as u64)?;
    Ok(())
}

/// Takes the lock, waiting up to `timeout`. `on_wait` is told who holds it when the wait starts
/// and every so often after.
pub fn acquire(
    path: &Path,
    timeout: Duration,
    me: &Holder,
    mut on_wait: impl FnMut(Option<&Holder>, Duration),
) -> Result<DeployLock> {
    let started = Instant::now();
    let mut next_reminder = Duration::ZERO;
    let mut file = open(path)?;
    let mut locked = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => break locked,
            Err((back, Errno::EWOULDBLOCK)) => file = back,
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("failed to lock `{}`", path.display()))
            }
        }
        let waited = started.elapsed();
        let holder = read_holder(&mut file);
        if crate::sys::process::stop_requested() {
            bail!("stopped while waiting for the deploy lock; nothing was deployed");
        }
        if waited >= timeout {
            match holder {
                Some(holder) => bail!(
                    "gave up after {} waiting for the deploy lock held by {holder}",
                    humantime::format_duration(timeout)
                ),
                None => bail!(
                    "gave up after {} waiting for the deploy lock `{}`",
                    humantime::format_duration(timeout),
                    path.display()
                ),
            }
        }
        if waited >= next_reminder {
            on_wait(holder.as_ref(), waited);
            next_reminder = waited + REMIND;
        }
        std::thread::sleep(POLL.min(timeout - waited));
    };
    let interrupted = read_holder(&mut locked);
    write_holder(&mut locked, me)
        .with_context(|| format!("failed to write lock file `{}`", path.display()))?;
    Ok(DeployLock {
        file: locked,
        interrupted,
    })
}

impl DeployLock {
    /// Rewrites who holds the lock (once the release id is known).
    pub fn update(&mut self, me: &Holder) -> Result<()> {
        write_holder(&mut self.file, me).context("failed to write the lock file")
    }

    /// Marks the deploy as finished and lets the next one in.
    pub fn release(self) -> Result<()> {
        self.file
            .set_len(0)
            .context("failed to clear the lock file")?;
        drop(self.file);
        Ok(())
    }
}

/// Who holds the lock right now, if anyone (for `status`).
pub fn current_holder(path: &Path) -> Result<Option<Holder>> {
    if !path.exists() {
        return Ok(None);
    }
    // Read-only: looking needs no write access to the deploy root.
    let file = File::open(path)
        .with_context(|| format!("failed to open lock file `{}`", path.display()))?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => Ok(None),
        Err((mut held, Errno::EWOULDBLOCK)) => Ok(read_holder(&mut held)),
        Err((_, errno)) => {
            Err(errno).with_context(|| format!("failed to inspect lock `{}`", path.display()))
        }
    }
}

/// A plain `flock(2)` on `path` (made if missing), shared or exclusive: `None` when `wait` is
/// zero and another holds it, else waiting up to `wait` (and failing past it, or when
/// ats-hook is asked to stop).
pub fn flock(path: &Path, exclusive: bool, wait: Duration) -> Result<Option<Flock<File>>> {
    let started = Instant::now();
    let mut file = open(path)?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    loop {
        match Flock::lock(file, arg) {
            Ok(locked) => return Ok(Some(locked)),
            Err((back, Errno::EWOULDBLOCK)) => file = back,
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("failed to lock `{}`", path.display()))
            }
        }
        if wait.is_zero() {
            return Ok(None);
        }
        if crate::sys::process::stop_requested() {
            bail!("stopped while waiting for `{}`", path.display());
        }
        if started.elapsed() >= wait {
            bail!(
                "gave up after {} waiting for `{}`",
                humantime::format_duration(wait),
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32) -> Holder {
        Holder {
            unrecorded: None,
            pid,
            commit: "abcdef1234".into(),
            git_ref: "refs/heads/main".into(),
            release: "r".into(),
            since: "now".into(),
            pusher: "dev".into(),
        }
    }

    #[test]
    fn second_acquire_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = acquire(&path, Duration::from_secs(1), &holder(1), |_, _| {}).unwrap();
        assert_eq!(current_holder(&path).unwrap(), Some(holder(1)));
        let mut told = Vec::new();
        let err = acquire(&path, Duration::from_millis(300), &holder(2), |h, _| {
            told.push(h.cloned())
        })
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("held by pid 1"), "{err:#}");
        assert_eq!(told, vec![Some(holder(1))]);
        first.release().unwrap();
        let again = acquire(&path, Duration::from_secs(1), &holder(3), |_, _| {}).unwrap();
        assert_eq!(again.interrupted, None);
    }

    #[test]
    fn unfinished_holder_is_reported_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = acquire(&path, Duration::from_secs(1), &holder(1), |_, _| {}).unwrap();
        drop(first); // dies without release()
        let second = acquire(&path, Duration::from_secs(1), &holder(2), |_, _| {}).unwrap();
        assert_eq!(second.interrupted, Some(holder(1)));
    }
}
