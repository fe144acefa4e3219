//! Several servers through Ansible, for real: real ansible-core (installed by tests/run into
//! `target/ansible`) sets up three hosts, each its own sshd on its own loopback address with its
//! own deploy user and deploy root, through `contrib/ansible/site.yml`.

mod hostile;
mod roll;
mod setup;
mod systemd;
mod workflow;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::system::{Public, Sshd};
use crate::support::*;

/// ansible-playbook from the virtualenv tests/run fills.
fn ansible_playbook() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ansible/bin/ansible-playbook");
    assert!(
        bin.exists(),
        "{} is missing: tests/run installs ansible-core there",
        bin.display()
    );
    bin
}

/// One host of the fleet.
struct Host {
    name: String,
    user: String,
    sshd: Sshd,
    address: String,
}

/// Three (or more) hosts, the control node's key authorized for root on each, and an inventory.
struct Fleet {
    public: Public,
    hosts: Vec<Host>,
    key: PathBuf,
    known_hosts: PathBuf,
    /// The systemd whose PID and mount namespace the hosts' sshd run in, if any.
    namespace: Option<i32>,
}

impl Fleet {
    fn new(count: usize) -> Fleet {
        Fleet::in_namespace(count, None)
    }

    fn in_namespace(count: usize, namespace: Option<i32>) -> Fleet {
        let public = Public::new();
        let keys = public.path().join("authorized");
        std::fs::create_dir_all(&keys).unwrap();
        let key = public.path().join("control_key");
        let mut keygen = Command::new("ssh-keygen");
        keygen
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "control node", "-f"])
            .arg(&key);
        run(&mut keygen, "ssh-keygen").success();
        std::fs::copy(key.with_extension("pub"), keys.join("root")).unwrap();
        let mut fleet = Fleet {
            known_hosts: public.path().join("known_hosts"),
            public,
            hosts: Vec::new(),
            key,
            namespace,
        };
        for n in 0..count {
            fleet.add_host(n);
        }
        fleet
    }

    fn add_host(&mut self, n: usize) {
        let address = format!("127.0.0.{}", 11 + n);
        let dir = self.public.path().join(format!("host{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        // The control node's key for root from this test's folder; deploy keys where
        // `keys add` writes them.
        let authorized = format!(
            "{}/%u .ssh/authorized_keys",
            self.public.path().join("authorized").display()
        );
        let sshd = Sshd::start_at(&dir, self.namespace, &address, &authorized);
        let host_key =
            std::fs::read_to_string(sshd.host_keys.join("ssh_host_ed25519_key.pub")).unwrap();
        let mut parts = host_key.split_whitespace();
        let line = format!(
            "[{address}]:{} {} {}\n",
            sshd.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        );
        let mut known = std::fs::read_to_string(&self.known_hosts).unwrap_or_default();
        known.push_str(&line);
        std::fs::write(&self.known_hosts, known).unwrap();
        self.hosts.push(Host {
            name: format!("web{}", n + 1),
            user: format!("atsf{}x{n}", std::process::id()),
            sshd,
            address,
        });
    }

    /// The group `app`: each host's address, port and deploy user, and nothing that logs in.
    fn group(&self) -> String {
        let mut text = String::from("[app]\n");
        for host in &self.hosts {
            text.push_str(&format!(
                "{} ansible_host={} ansible_port={} ats_hook_user={}\n",
                host.name, host.address, host.sshd.port, host.user
            ));
        }
        text
    }

    /// The inventory: the group, and root's login on every host with the control node's key.
    fn inventory(&self) -> PathBuf {
        let mut text = self.group();
        text.push_str(&format!(
            "\n[all:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n\
             ansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'\n\
             ansible_python_interpreter=/usr/bin/python3\nats_hook_binary_src={}\n\
             ats_hook_binary={}\nats_hook_config_dir={}\n",
            self.key.display(),
            self.known_hosts.display(),
            self.public.bin.display(),
            self.public.path().join("bin/installed-ats-hook").display(),
            self.public.path().join("etc-ats-hook").display()
        ));
        let path = self.public.path().join("inventory.ini");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `ansible-playbook PLAYBOOK` from `contrib/ansible`, against the inventory.
    fn playbook(&self, playbook: &str, extra: &[&str]) -> Run {
        self.playbook_with(&self.inventory(), playbook, extra)
    }

    /// The same against another inventory.
    fn playbook_with(&self, inventory: &Path, playbook: &str, extra: &[&str]) -> Run {
        let mut cmd = command(ansible_playbook(), self.public.path());
        cmd.arg("-i")
            .arg(inventory)
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("contrib/ansible")
                    .join(playbook),
            )
            .args(extra)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_LOCAL_TEMP", self.public.path().join("ansible-tmp"))
            .env("ANSIBLE_HOME", self.public.path().join("ansible-home"))
            // The control node's user, as it is: the tasks it runs itself keep their files in
            // its home (with `command`'s `tester`, Ansible made `~tester/` beside the playbooks).
            .env("USER", "root");
        run(&mut cmd, format!("ansible-playbook {playbook}"))
    }

    fn home(&self, host: &Host) -> PathBuf {
        PathBuf::from("/home").join(&host.user)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = Command::new("crontab")
                .args(["-u", &host.user, "-r"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let _ = Command::new("userdel")
                .args(["-r", "-f", &host.user])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `changed=N` of each host in the play recap.
fn changed(recap: &str) -> Vec<(String, u32)> {
    recap
        .lines()
        .skip_while(|line| !line.starts_with("PLAY RECAP"))
        .skip(1)
        .filter_map(|line| {
            let host = line.split_whitespace().next()?.to_string();
            let n = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("changed="))?
                .parse()
                .ok()?;
            Some((host, n))
        })
        .collect()
}

/// The app's config on every host: a migration step that counts its runs in one file all hosts
/// share, and a build step that fails on a host holding `fail-here` in its deploy root.
fn app_vars(fleet: &Fleet, push_key: &Path) -> String {
    let ran = fleet.public.path().join("migrations-ran");
    std::fs::write(&ran, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ran, std::fs::Permissions::from_mode(0o666)).unwrap();
    let public_key = std::fs::read_to_string(push_key.with_extension("pub")).unwrap();
    format!(
        "ats_hook_config: |\n  [[step]]\n  name = \"migrate\"\n  run = 'echo \"$ATS_DEPLOY_ROOT $ATS_COMMIT\" >> {ran}'\n  skippable = true\n  \
         [[step]]\n  name = \"build\"\n  run = 'test ! -e \"$ATS_DEPLOY_ROOT/fail-here\" && printf \"%s\\\\n\" \"$ATS_COMMIT\" > version.txt'\n\
         ats_hook_jobs_installer: cron\n\
         ats_hook_keys:\n  - name: ci\n    public_key: \"{}\"\n    allow_rollback: true\n",
        public_key.trim(),
        ran = ran.display()
    )
}

/// What a host's live release holds (its `version.txt`).
fn version(fleet: &Fleet, host: &Host) -> String {
    std::fs::read_to_string(fleet.home(host).join("app/current/version.txt"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `deploy.yml` of `commit` from `source`, migrating with the step `migrate`.
fn fleet_roll(fleet: &Fleet, source: &Clone, commit: &str, ssh: &str) -> Run {
    roll_with(fleet, source, commit, ssh, "migrate", &[])
}

/// `deploy.yml` of `commit` from `source`, migrating with `migrate` (every step everywhere when
/// empty), pushing with the `-e` JSON `ssh`, with `extra` arguments.
fn roll_with(
    fleet: &Fleet,
    source: &Clone,
    commit: &str,
    ssh: &str,
    migrate: &str,
    extra: &[&str],
) -> Run {
    let commit = format!("ats_hook_commit={commit}");
    let source = format!("ats_hook_source={}", source.dir.display());
    let migrate = format!("ats_hook_migrate_step={migrate}");
    let mut args = vec!["-e", &commit, "-e", &source, "-e", &migrate, "-e", ssh];
    args.extend_from_slice(extra);
    fleet.playbook("deploy.yml", &args)
}

/// `rollback.yml` to the release of `commit` from `source`, through the `-e` JSON `ssh`.
fn fleet_rollback(fleet: &Fleet, source: &Clone, commit: &str, ssh: &str) -> Run {
    fleet.playbook(
        "rollback.yml",
        &[
            "-e",
            &format!("ats_hook_commit={commit}"),
            "-e",
            &format!("ats_hook_source={}", source.dir.display()),
            "-e",
            ssh,
        ],
    )
}

/// `count` hosts set up by site.yml for the app of `app_vars`, a clone on the control node,
/// and the `-e` JSON that makes deploy.yml push with the CI key.
fn fleet_with_app(count: usize) -> (Fleet, Clone, String) {
    let fleet = Fleet::new(count);
    let push_key = ci_key(&fleet);
    set_up(&fleet, &app_vars(&fleet, &push_key)).success();
    let source = Clone::new_in(fleet.public.path(), "source");
    let ssh = ssh_with(&fleet, &push_key);
    (fleet, source, ssh)
}

/// The CI's deploy key, made on the control node.
fn ci_key(fleet: &Fleet) -> PathBuf {
    let push_key = fleet.public.path().join("push_key");
    let mut keygen = Command::new("ssh-keygen");
    keygen
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f"])
        .arg(&push_key);
    run(&mut keygen, "ssh-keygen").success();
    push_key
}

/// site.yml with `vars` as the group's variables (group_vars/app.yml beside the inventory).
fn set_up(fleet: &Fleet, vars: &str) -> Run {
    let group_vars = fleet.public.path().join("group_vars");
    std::fs::create_dir_all(&group_vars).unwrap();
    std::fs::write(group_vars.join("app.yml"), vars).unwrap();
    fleet.playbook("site.yml", &[])
}

/// The `-e` JSON that makes deploy.yml push with `key` (as JSON: `-e key=value` splits at
/// spaces).
fn ssh_with(fleet: &Fleet, key: &Path) -> String {
    serde_json::json!({
        "ats_hook_ssh_command": format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            key.display(),
            fleet.known_hosts.display()
        )
    })
    .to_string()
}
