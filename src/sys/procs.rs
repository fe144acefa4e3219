//! Which running processes use a folder: as their working directory, their root, their
//! executable, an open file or a mapped file under it, read from `/proc`.
//!
//! A release or a stored build that a process uses is never recycled or removed: an app server
//! whose working directory is renamed or deleted under it fails on its next reload, and one whose
//! files are rewritten serves a mix of two commits. The health check also uses it to wait for
//! the processes of the release that was live to go before it trusts an answer.
//!
//! Only the processes this user may inspect are seen (all of them as root): an app server run
//! by another user is invisible here, which the docs say.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// How a process uses a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Use {
    WorkingDirectory,
    Root,
    Executable,
    OpenFile,
    MappedFile,
}

impl fmt::Display for Use {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Use::WorkingDirectory => "working directory",
            Use::Root => "root directory",
            Use::Executable => "executable",
            Use::OpenFile => "open file",
            Use::MappedFile => "mapped file",
        })
    }
}

/// One process using something under a scanned folder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct User {
    pub pid: i32,
    /// The process's name (`comm`), for messages.
    pub name: String,
    pub how: Use,
    /// The path it uses, as the kernel names it now.
    pub path: PathBuf,
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({}, {})", self.pid, self.name, self.how)
    }
}

/// What the processes used under one folder when it was scanned.
#[derive(Debug, Default)]
pub struct Scan {
    users: Vec<User>,
}

impl Scan {
    /// Reads `/proc` once for every process but this one, keeping what lies under `root`.
    /// Processes that exit or cannot be read while it runs are passed over.
    pub fn under(root: &Path) -> Scan {
        let Ok(root) = root.canonicalize() else {
            return Scan::default();
        };
        let me = std::process::id() as i32;
        let mut users = BTreeSet::new();
        for pid in listed().filter(|pid| *pid != me) {
            scan_process(pid, &proc_dir(pid), &root, &mut users);
        }
        Scan {
            users: users.into_iter().collect(),
        }
    }

    /// Every use found.
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// The processes using `dir` or anything under it, one entry each (the first use found).
    pub fn users_of(&self, dir: &Path) -> Vec<&User> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut seen = BTreeSet::new();
        self.users
            .iter()
            .filter(|user| user.path.starts_with(&dir))
            .filter(|user| seen.insert(user.pid))
            .collect()
    }

    /// Whether process `pid` uses something under `dir`.
    pub fn pid_uses(&self, pid: i32, dir: &Path) -> bool {
        self.users_of(dir).iter().any(|user| user.pid == pid)
    }

    /// One line naming who uses `dir`, for messages: "pid 12 (gunicorn, working directory)".
    pub fn describe(&self, dir: &Path) -> Option<String> {
        let users = self.users_of(dir);
        if users.is_empty() {
            return None;
        }
        let mut named: Vec<String> = users.iter().take(3).map(|u| u.to_string()).collect();
        if users.len() > 3 {
            named.push(format!("{} more", users.len() - 3));
        }
        Some(named.join(", "))
    }
}

fn scan_process(pid: i32, dir: &Path, root: &Path, users: &mut BTreeSet<User>) {
    // A kernel thread has no executable, and no files of ours: passed over, with the reads
    // that would cost.
    let Ok(exe) = std::fs::read_link(dir.join("exe")) else {
        return;
    };
    let mut found: Vec<(Use, PathBuf)> = Vec::new();
    let mut check = |how: Use, path: PathBuf| {
        let path = strip_deleted(path);
        if path.starts_with(root) {
            found.push((how, path));
        }
    };
    check(Use::Executable, exe);
    for (link, how) in [("cwd", Use::WorkingDirectory), ("root", Use::Root)] {
        if let Ok(path) = std::fs::read_link(dir.join(link)) {
            check(how, path);
        }
    }
    if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
        for fd in fds.flatten() {
            if let Ok(path) = std::fs::read_link(fd.path()) {
                if path.is_absolute() {
                    check(Use::OpenFile, path);
                }
            }
        }
    }
    if let Ok(maps) = std::fs::read_to_string(dir.join("maps")) {
        let mut last: Option<&str> = None;
        for line in maps.lines() {
            // address perms offset dev inode path: the path is the rest after five fields.
            let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim_start) else {
                continue;
            };
            if !path.starts_with('/') || last == Some(path) {
                continue;
            }
            last = Some(path);
            check(Use::MappedFile, PathBuf::from(path));
        }
    }
    if found.is_empty() {
        return;
    }
    // The name only for the processes that matter.
    let name = comm(dir);
    for (how, path) in found {
        users.insert(User {
            pid,
            name: name.clone(),
            how,
            path,
        });
    }
}

/// The kernel names a deleted file `/path (deleted)`: the folder it was in is what matters.
fn strip_deleted(path: PathBuf) -> PathBuf {
    match path.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
        Some(stripped) => PathBuf::from(stripped),
        None => path,
    }
}

/// A running process, with the working directory that tells which release it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub pid: i32,
    pub name: String,
    /// `None` when this user may not read it.
    pub cwd: Option<PathBuf>,
    /// Its executable, and the absolute paths on its command line (a script, `--chdir`).
    pub exe: Option<PathBuf>,
    pub paths: Vec<PathBuf>,
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.name)
    }
}

fn running(pid: i32) -> Running {
    let dir = proc_dir(pid);
    Running {
        pid,
        name: comm(&dir),
        cwd: std::fs::read_link(dir.join("cwd")).ok().map(strip_deleted),
        exe: std::fs::read_link(dir.join("exe")).ok().map(strip_deleted),
        paths: std::fs::read(dir.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter_map(|arg| std::str::from_utf8(arg).ok())
            .map(|arg| arg.rsplit_once('=').map_or(arg, |(_, value)| value))
            .filter(|arg| arg.starts_with('/'))
            .map(PathBuf::from)
            .collect(),
    }
}

fn proc_dir(pid: i32) -> PathBuf {
    Path::new("/proc").join(pid.to_string())
}

/// A process's name (`comm`), for messages.
fn comm(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("comm"))
        .map(|n| n.trim_end().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// Every pid `/proc` lists (as this user sees them), zombies included.
fn listed() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
}

/// The processes of this machine (as this user sees them), zombies left out: an exited
/// process runs nothing.
fn pids() -> impl Iterator<Item = i32> {
    listed().filter(|pid| alive(*pid))
}

/// The fields of `/proc/<pid>/stat` after the name: state, ppid, …. The name comes in
/// parentheses and may hold any character, so the fields start after the last `)`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(proc_dir(pid).join("stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Whether process `pid` runs: it exists (as any user) and is no zombie.
pub fn alive(pid: i32) -> bool {
    use nix::errno::Errno;
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(Errno::EPERM)
    ) && !is_zombie(pid)
}

/// Whether `/proc` shows process `pid` as exited but not reaped.
pub fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| {
        fields
            .first()
            .is_some_and(|state| state.starts_with(['Z', 'X', 'x']))
    })
}

/// The processes of the systemd unit `unit`: those in its control group, or one under it.
pub fn of_unit(unit: &str) -> Vec<Running> {
    let suffix = format!("/{unit}");
    let inside = format!("/{unit}/");
    pids()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
                text.lines().any(|line| {
                    let path = line.splitn(3, ':').nth(2).unwrap_or_default();
                    path.ends_with(&suffix) || path.contains(&inside)
                })
            })
        })
        .map(running)
        .collect()
}

/// Process `pid` and its descendants.
pub fn with_children(pid: i32) -> Vec<Running> {
    let parents: Vec<(i32, i32)> = pids()
        .filter_map(|p| Some((p, stat_fields(p)?.get(1)?.parse().ok()?)))
        .collect();
    let mut family = vec![pid];
    let mut n = 0;
    while n < family.len() {
        let parent = family[n];
        family.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        n += 1;
    }
    // The children came from `pids()`, alive; the parent may be gone.
    if !alive(pid) {
        family.remove(0);
    }
    family.into_iter().map(running).collect()
}

/// When process `pid` started, in clock ticks since boot: with the pid, it names one process,
/// which a pid alone does not once the pid is reused.
pub fn start_ticks(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The processes of process group `pgid` that still run (zombies left out).
pub fn group_members(pgid: i32) -> Vec<i32> {
    pids()
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|fields| {
                fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_working_in_a_folder_and_passes_over_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("releases/one");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(dir.path().join("releases/two")).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&inside)
            .spawn()
            .unwrap();
        let file = std::fs::File::create(dir.path().join("releases/two/open")).unwrap();
        let scan = Scan::under(dir.path());
        child.kill().unwrap();
        child.wait().unwrap();
        drop(file);
        let users = scan.users_of(&inside);
        assert_eq!(users.len(), 1, "{users:?}");
        assert_eq!(users[0].pid, child.id() as i32);
        assert_eq!(users[0].name, "sleep");
        assert_eq!(users[0].how, Use::WorkingDirectory);
        assert!(scan.pid_uses(child.id() as i32, dir.path()));
        // This process holds a file open in `two`, but a scan never counts itself.
        assert!(scan.users_of(&dir.path().join("releases/two")).is_empty());
        assert_eq!(
            scan.describe(&inside).unwrap(),
            format!("pid {} (sleep, working directory)", child.id())
        );
    }

    #[test]
    fn a_deleted_path_counts_for_its_folder() {
        assert_eq!(
            strip_deleted(PathBuf::from("/srv/app/releases/a/x.so (deleted)")),
            PathBuf::from("/srv/app/releases/a/x.so")
        );
    }
}
