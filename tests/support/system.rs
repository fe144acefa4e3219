//! Real system parts for tests: Unix users and an sshd on loopback (TESTBED.md's recipe).
//! Both are removed when dropped, also when the test fails.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

/// Fails the test unless it runs as root: these tests create users and start sshd, which a
/// server's admin does as root, and which CI does.
#[track_caller]
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates users and starts sshd: run it as root (CI does)"
    );
}

/// A Unix user with a home folder, deleted with its files and processes when dropped.
pub struct User {
    pub name: String,
    pub home: PathBuf,
}

static USERS: AtomicUsize = AtomicUsize::new(0);

impl User {
    pub fn create() -> User {
        require_root();
        let name = format!(
            "atsh{}x{}",
            std::process::id(),
            USERS.fetch_add(1, Ordering::SeqCst)
        );
        // useradd locks /etc/passwd; parallel tests may find it busy for a moment.
        let mut tries = 0;
        loop {
            let status = Command::new("useradd")
                .args(["-m", "-s", "/bin/sh", &name])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() {
                break;
            }
            tries += 1;
            assert!(tries < 50, "useradd {name} kept failing");
            std::thread::sleep(Duration::from_millis(100));
        }
        // A `*` password: no password login, but not a locked account (sshd refuses those).
        assert!(Command::new("usermod")
            .args(["-p", "*", &name])
            .status()
            .unwrap()
            .success());
        let home = PathBuf::from(format!("/home/{name}"));
        User { name, home }
    }

    pub fn uid(&self) -> u32 {
        nix::unistd::User::from_name(&self.name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    }

    /// Runs a shell command as this user.
    pub fn sh(&self, script: &str) -> Run {
        let mut cmd = Command::new("su");
        cmd.args(["-s", "/bin/sh", "-c", script, &self.name]);
        run(&mut cmd, format!("as {}: {script}", self.name))
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        for _ in 0..50 {
            let done = Command::new("userdel")
                .args(["-r", &self.name])
                .stderr(Stdio::null())
                .status();
            if done.is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A folder everyone may read and enter, holding a copy of the binary that the deploy user can
/// run (the build folder may not be reachable for other users).
pub struct Public {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
}

impl Public {
    pub fn new() -> Public {
        let dir = tempfile::Builder::new()
            .prefix("ats-hook-ssh-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("bin/ats-hook");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::set_permissions(
            bin.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Public { dir, bin }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The copied binary with ARGS, run as root in the hermetic environment.
    pub fn ats(&self, args: &[&str]) -> Run {
        let mut cmd = command(&self.bin, self.path());
        cmd.args(args);
        run(&mut cmd, format!("ats-hook {}", args.join(" ")))
    }
}

/// sshd on a free loopback port, with its own host key, stopped when dropped.
pub struct Sshd {
    pub port: u16,
    pub host_keys: PathBuf,
    dir: PathBuf,
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        require_root();
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "{} is missing: install openssh-server (tests/run does)",
            sshd.display()
        );
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = dir.join("sshd");
        let host_keys = dir.join("hostkeys");
        std::fs::create_dir_all(&host_keys).unwrap();
        let key = host_keys.join("ssh_host_ed25519_key");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success());
        let port = closed_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAuthorizedKeysFile .ssh/authorized_keys\n\
                 AllowTcpForwarding yes\nAcceptEnv GIT_PROTOCOL\n",
                key = key.display(),
                pid = dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let status = Command::new(sshd)
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "sshd did not start: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        wait_for("sshd to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Sshd {
            port,
            host_keys,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// `ssh` options for a client using `key` and pinned `known_hosts`.
    pub fn ssh_command(&self, key: &Path, known_hosts: &Path) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o ConnectTimeout=10",
            key.display(),
            known_hosts.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("sshd.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}
