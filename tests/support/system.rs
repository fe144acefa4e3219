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

    /// `ats-hook install --repo REPO --user USER` as root, which must succeed.
    pub fn install_for(&self, repo: &Path, user: &User) {
        self.ats(&[
            "install",
            "--repo",
            repo.to_str().unwrap(),
            "--user",
            &user.name,
        ])
        .success();
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
    /// The daemon's pid, read when it started (its folder may be gone when this is dropped).
    /// `None` inside a namespace: sshd dies with it, and its pidfile holds a pid of that
    /// namespace.
    pid: Option<i32>,
}

impl Sshd {
    /// Starts sshd; with `namespace`, inside that systemd's PID and mount namespace.
    pub fn start(dir: &Path, namespace: Option<i32>) -> Sshd {
        Sshd::start_at(dir, namespace, "127.0.0.1", ".ssh/authorized_keys")
    }

    /// Starts sshd listening on `address` (any of 127.0.0.0/8: a host of its own), reading
    /// each user's keys from `authorized_keys` (sshd's `%u` tokens allowed).
    pub fn start_at(
        dir: &Path,
        namespace: Option<i32>,
        address: &str,
        authorized_keys: &str,
    ) -> Sshd {
        require_root();
        let wrap = |program: &Path| -> Command {
            match namespace {
                Some(pid) => {
                    let mut cmd = Command::new("nsenter");
                    cmd.args(["-t", &pid.to_string(), "-p", "-m", "--"])
                        .arg(program);
                    cmd
                }
                None => Command::new(program),
            }
        };
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "{} is missing: install openssh-server (tests/run does)",
            sshd.display()
        );
        let made = wrap(Path::new("/bin/mkdir"))
            .args(["-p", "/run/sshd"])
            .status()
            .unwrap();
        assert!(made.success());
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
                "Port {port}\nListenAddress {address}\nHostKey {key}\nPidFile {pid}\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAuthorizedKeysFile {authorized_keys}\n\
                 AllowTcpForwarding yes\nAcceptEnv GIT_PROTOCOL\n",
                key = key.display(),
                pid = dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let status = wrap(sshd)
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
            std::net::TcpStream::connect((address, port)).is_ok()
        });
        let pid = match namespace {
            Some(_) => None,
            None => {
                let pidfile = dir.join("sshd.pid");
                let read = || {
                    std::fs::read_to_string(&pidfile)
                        .ok()
                        .and_then(|text| text.trim().parse::<i32>().ok())
                };
                // sshd creates the file before it writes the pid into it.
                wait_for("a pid in sshd's pidfile", Duration::from_secs(10), || {
                    read().is_some()
                });
                read()
            }
        };
        Sshd {
            port,
            host_keys,
            dir,
            pid,
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
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// A server set up with `install` and `keys add --generate`, a client holding the key.
pub struct SshSetup {
    pub public: Public,
    pub user: User,
    pub sshd: Sshd,
    pub repo: PathBuf,
    pub root: PathBuf,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub url: String,
    pub keys_output: String,
}

impl SshSetup {
    /// A fresh user and sshd, then `install` (with `hook`) and `keys add --generate`; `config`
    /// (with `ROOT` for the deploy root) replaces the template.
    pub fn new(hook: &str, config: &str) -> SshSetup {
        SshSetup::with(Public::new(), User::create(), hook, config, None)
    }

    /// The same for a given user; with `namespace`, sshd (and so every hook) runs inside that
    /// systemd namespace.
    pub fn with(
        public: Public,
        user: User,
        hook: &str,
        config: &str,
        namespace: Option<i32>,
    ) -> SshSetup {
        let sshd = Sshd::start(public.path(), namespace);
        let repo = user.home.join("app.git");
        let root = user.home.join("app");

        let install = public.ats(&[
            "install",
            "--repo",
            repo.to_str().unwrap(),
            "--user",
            &user.name,
            "--hook",
            hook,
        ]);
        install
            .success()
            .stdout_has("did create the bare repository");
        // The admin edits the config the template wrote.
        std::fs::write(
            repo.join("ats-hook.toml"),
            config.replace("ROOT", root.to_str().unwrap()),
        )
        .unwrap();
        std::os::unix::fs::chown(repo.join("ats-hook.toml"), Some(user.uid()), None).unwrap();

        let client = public.path().join("client");
        std::fs::create_dir_all(&client).unwrap();
        let key = client.join("deploy_key");
        let keys = public.ats(&[
            "keys",
            "add",
            "--repo",
            repo.to_str().unwrap(),
            "--user",
            &user.name,
            "--generate",
            "--host",
            "127.0.0.1",
            "--port",
            &sshd.port.to_string(),
            "--host-keys",
            sshd.host_keys.to_str().unwrap(),
            "--private-key-file",
            key.to_str().unwrap(),
        ]);
        keys.success().stdout_has("it can push to and fetch from");
        let keys_output = keys.stdout();
        let url = format!(
            "ssh://{}@127.0.0.1:{}{}",
            user.name,
            sshd.port,
            repo.display()
        );
        assert!(
            keys_output.contains(&format!("STAGING_REMOTE_REPO:\n{url}\n")),
            "{keys_output}"
        );
        let known_hosts = client.join("known_hosts");
        SshSetup {
            public,
            user,
            sshd,
            repo,
            root,
            key,
            known_hosts,
            url,
            keys_output,
        }
    }

    pub fn ssh(&self) -> String {
        self.sshd.ssh_command(&self.key, &self.known_hosts)
    }

    /// Another key, made on the client as `name` and added with `keys add` and `flag`
    /// (`--allow-rollback`, `--read-only`): what `keys add` said, and the ssh command that
    /// uses the key.
    pub fn add_key(&self, name: &str, flag: &str) -> (Run, String) {
        let key = self.public.path().join("client").join(name);
        let mut keygen = Command::new("ssh-keygen");
        keygen
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key);
        run(&mut keygen, "ssh-keygen").success();
        let added = self.public.ats(&[
            "keys",
            "add",
            "--repo",
            self.repo.to_str().unwrap(),
            "--user",
            &self.user.name,
            "--public-key",
            key.with_extension("pub").to_str().unwrap(),
            flag,
        ]);
        (added, self.sshd.ssh_command(&key, &self.known_hosts))
    }

    /// A clone on the pushing side with the remote `staging` added by `remote add --scan`.
    pub fn clone(&self) -> Clone {
        let clone = Clone::new_in(self.public.path(), "laptop");
        let mut add = command(&self.public.bin, self.public.path());
        add.args([
            "remote",
            "add",
            "staging",
            &self.url,
            "--scan",
            "--known-hosts",
        ])
        .arg(&self.known_hosts)
        .current_dir(&clone.dir);
        run(&mut add, "remote add")
            .success()
            .stdout_has("host key(s) of `[127.0.0.1]:");
        clone
    }

    /// `ssh deploy-key@server COMMAND`, as an attacker holding the key would.
    pub fn attempt(&self, extra: &[&str], remote_command: Option<&str>) -> Run {
        let mut cmd = Command::new("sh");
        let mut line = self.ssh();
        for arg in extra {
            line.push(' ');
            line.push_str(arg);
        }
        line.push_str(&format!(
            " -p {} {}@127.0.0.1",
            self.sshd.port, self.user.name
        ));
        let mut cmd_line = line;
        if let Some(remote) = remote_command {
            cmd_line.push_str(&format!(" {}", shell_quote(remote)));
        }
        cmd.arg("-c").arg(&cmd_line);
        run(&mut cmd, cmd_line.clone())
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A real filesystem mounted for a test, unmounted (lazily) when dropped, also on failure.
pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (`6m`) at `at`: a small disk that fills up for real.
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        require_root();
        std::fs::create_dir_all(at).unwrap();
        run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at),
            "mount -t tmpfs",
        )
        .success();
        Mount(at.to_path_buf())
    }

    /// An ext4 in the image file `image` of `size` (`600M`, sparse), loop-mounted at `at`: a
    /// filesystem of its own, which no other test's `syncfs` writes out.
    pub fn ext4_image(image: &Path, at: &Path, size: &str) -> Mount {
        Mount::image(image, at, size, &["mkfs.ext4", "-q", "-F"])
    }

    /// A btrfs in the image file `image` of `size` (at least `110M`), loop-mounted at `at`.
    pub fn btrfs_image(image: &Path, at: &Path, size: &str) -> Mount {
        Mount::image(image, at, size, &["mkfs.btrfs", "-q", "-f"])
    }

    fn image(image: &Path, at: &Path, size: &str, mkfs: &[&str]) -> Mount {
        require_root();
        std::fs::create_dir_all(at).unwrap();
        run(
            Command::new("truncate").args(["-s", size]).arg(image),
            "truncate",
        )
        .success();
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(image), mkfs[0]).success();
        run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(image)
                .arg(at),
            "mount -o loop",
        )
        .success();
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
