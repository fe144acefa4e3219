//! Several servers through Ansible, for real: real ansible-core (installed by tests/run into
//! `target/ansible`) sets up three hosts, each its own sshd on its own loopback address with its
//! own deploy user and deploy root, through `contrib/ansible/site.yml`.

use std::path::{Path, PathBuf};
use std::process::Command;

use pretty_assertions::assert_eq;

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

#[test]
fn site_yml_sets_every_host_up_and_a_second_run_changes_nothing() {
    let fleet = Fleet::new(3);
    let first = fleet.playbook("site.yml", &[]);
    let out = first.success().stdout();
    let recap = changed(&out);
    assert_eq!(recap.len(), 3, "{out}");
    assert!(recap.iter().all(|(_, n)| *n > 0), "{out}");
    for host in &fleet.hosts {
        let repo = fleet.home(host).join("app.git");
        assert!(git2::Repository::open_bare(&repo).is_ok(), "{}", host.name);
        // Gate mode: the hook is pre-receive, linked to the installed binary.
        assert_eq!(
            std::fs::read_link(repo.join("hooks/pre-receive")).unwrap(),
            fleet.public.path().join("bin/installed-ats-hook")
        );
        let config = std::fs::read_to_string(repo.join("ats-hook.toml")).unwrap();
        assert!(
            config.contains(&format!(
                "root = \"{}\"",
                fleet.home(host).join("app").display()
            )),
            "{config}"
        );
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&repo).unwrap().uid();
        let user = nix::unistd::User::from_name(&host.user).unwrap().unwrap();
        assert_eq!(owner, user.uid.as_raw(), "{}", host.name);
    }

    // Idempotent: nothing changes on the second run.
    let again = fleet.playbook("site.yml", &[]).success().stdout();
    let recap = changed(&again);
    assert_eq!(recap.len(), 3, "{again}");
    assert!(recap.iter().all(|(_, n)| *n == 0), "{again}");
}

#[test]
fn a_host_that_cannot_be_reached_fails_by_name_and_the_others_are_set_up() {
    let mut fleet = Fleet::new(2);
    // A third host whose sshd is gone.
    fleet.add_host(2);
    let gone = fleet.hosts.pop().unwrap();
    let (name, address, port) = (gone.name.clone(), gone.address.clone(), gone.sshd.port);
    drop(gone);
    let mut text = std::fs::read_to_string(fleet.inventory()).unwrap();
    text = text.replacen(
        "[app]\n",
        &format!(
            "[app]\n{name} ansible_host={address} ansible_port={port} ats_hook_user=nobody-here\n"
        ),
        1,
    );
    let inventory = fleet.public.path().join("with-unreachable.ini");
    std::fs::write(&inventory, text).unwrap();
    let out = fleet.playbook_with(&inventory, "site.yml", &[]);
    out.failure();
    let stdout = out.stdout();
    assert!(
        stdout.contains(&format!("fatal: [{name}]: UNREACHABLE!")),
        "{stdout}"
    );
    for host in &fleet.hosts {
        assert!(fleet.home(host).join("app.git/ats-hook.toml").is_file());
    }
}

#[test]
fn the_ansible_content_is_lint_clean() {
    let lint = ansible_playbook().with_file_name("ansible-lint");
    let mut cmd = command(&lint, Path::new(env!("CARGO_MANIFEST_DIR")));
    cmd.args(["--offline", "--nocolor", "."])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/ansible"))
        .env(
            "ANSIBLE_HOME",
            std::env::temp_dir().join("ats-hook-ansible-lint"),
        )
        // Not `~tester/.ansible/tmp`, which the user of `command` (none here) makes literal.
        .env(
            "ANSIBLE_REMOTE_TEMP",
            std::env::temp_dir().join("ats-hook-ansible-lint/tmp"),
        );
    run(&mut cmd, "ansible-lint contrib/ansible")
        .success()
        .stderr_has("Passed: 0 failure(s), 0 warning(s)");
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

#[test]
fn a_wrong_key_or_a_host_never_set_up_stops_the_roll_by_name_before_any_change() {
    let (mut fleet, source, ssh) = fleet_with_app(2);
    let v1 = source.commit_file("app.py", "1\n");
    fleet_roll(&fleet, &source, &v1, &ssh).success();

    // A key no host authorized: the first host refuses it, and the roll stops there.
    let stranger = fleet.public.path().join("stranger");
    let mut keygen = Command::new("ssh-keygen");
    keygen
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger);
    run(&mut keygen, "ssh-keygen").success();
    let v2 = source.commit_file("app.py", "2\n");
    // A commit the control node's clone does not have: nothing is pushed anywhere.
    let unknown = fleet_roll(&fleet, &source, "v9.9.9", &ssh);
    unknown.failure();
    let out = unknown.stdout();
    assert!(
        out.contains("TASK [Resolve the commit on the control node]")
            && out.contains("fatal: [web1 -> localhost]: FAILED!")
            && !out.contains("TASK [Push the commit"),
        "{out}"
    );
    for host in &fleet.hosts {
        assert_eq!(version(&fleet, host), v1, "{}", host.name);
    }
    let refused = fleet_roll(&fleet, &source, &v2, &ssh_with(&fleet, &stranger));
    refused.failure();
    let out = refused.stdout();
    assert!(out.contains("fatal: [web1 -> localhost]: FAILED!"), "{out}");
    assert!(out.contains("Permission denied (publickey)"), "{out}");
    for host in &fleet.hosts {
        assert_eq!(version(&fleet, host), v1, "{}", host.name);
    }

    // A host in the inventory that site.yml never set up: named, and the hosts after it wait.
    fleet.add_host(2);
    fleet.hosts.swap(0, 2);
    let never = fleet_roll(&fleet, &source, &v2, &ssh);
    never.failure();
    let out = never.stdout();
    let name = &fleet.hosts[0].name;
    assert!(
        out.contains(&format!("fatal: [{name} -> localhost]: FAILED!")),
        "{out}"
    );
    for host in &fleet.hosts[1..] {
        assert_eq!(version(&fleet, host), v1, "{}", host.name);
    }
}

#[test]
fn deploy_yml_rolls_a_commit_host_by_host_migrating_once_and_stops_at_a_failure() {
    let (mut fleet, source, ssh) = fleet_with_app(3);
    let v1 = source.commit_file("app.py", "1\n");
    let ran_file = fleet.public.path().join("migrations-ran");
    let migrations = || {
        std::fs::read_to_string(&ran_file)
            .unwrap()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    fleet_roll(&fleet, &source, &v1, &ssh).success();
    for host in &fleet.hosts {
        assert_eq!(version(&fleet, host), v1, "{}", host.name);
    }
    // Once per roll, on the first host.
    let ran = migrations();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran[0].starts_with(
        &fleet
            .home(&fleet.hosts[0])
            .join("app")
            .display()
            .to_string()
    ));

    // A step that fails on the second host stops the roll there.
    std::fs::write(fleet.home(&fleet.hosts[1]).join("app/fail-here"), "").unwrap();
    let v2 = source.commit_file("app.py", "2\n");
    let failed = fleet_roll(&fleet, &source, &v2, &ssh);
    failed.failure();
    let out = failed.stdout();
    assert!(out.contains("fatal: [web2 -> localhost]: FAILED!"), "{out}");
    assert!(out.contains("deploy FAILED at step build"), "{out}");
    assert_eq!(version(&fleet, &fleet.hosts[0]), v2);
    assert_eq!(version(&fleet, &fleet.hosts[1]), v1);
    assert_eq!(
        version(&fleet, &fleet.hosts[2]),
        v1,
        "the roll went past the failed host"
    );
    assert_eq!(migrations().len(), 2);

    // status.yml shows the host left on another release.
    let status = fleet
        .playbook("status.yml", &["-e", &ssh])
        .success()
        .stdout();
    let row = |name: &str| {
        status
            .lines()
            .find(|l| l.contains(&format!("\"{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {status}"))
            .to_string()
    };
    assert!(
        row("web1").contains(&v2[..7]) && row("web1").contains("DIFFERS"),
        "{status}"
    );
    for name in ["web2", "web3"] {
        assert!(
            row(name).contains(&v1[..7]) && !row(name).contains("DIFFERS"),
            "{status}"
        );
    }
    assert!(row("web2").contains("failed"), "{status}");

    // rollback.yml brings the group back to v1: web1 rolls back, the others are there already.
    let back = fleet_rollback(&fleet, &source, &v1, &ssh);
    let out = back.success().stdout();
    let recap = changed(&out);
    assert_eq!(
        recap,
        [
            ("web1".to_string(), 1),
            ("web2".to_string(), 0),
            ("web3".to_string(), 0)
        ],
        "{out}"
    );
    for host in &fleet.hosts {
        assert_eq!(version(&fleet, host), v1, "{}", host.name);
    }
    let status = fleet
        .playbook("status.yml", &["-e", &ssh])
        .success()
        .stdout();
    assert!(!status.contains("DIFFERS"), "{status}");

    // Fixed, the roll finishes. web1's branch is at v2 already (a rollback moves no branch), so
    // git has nothing to push there and the playbook deploys it by hand; this roll migrates
    // once, there, and nowhere else.
    std::fs::remove_file(fleet.home(&fleet.hosts[1]).join("app/fail-here")).unwrap();
    fleet_roll(&fleet, &source, &v2, &ssh).success();
    for host in &fleet.hosts {
        assert_eq!(version(&fleet, host), v2, "{}", host.name);
    }
    let ran = migrations();
    assert_eq!(ran.len(), 3, "{ran:?}");
    // That deploy came through the deploy key's forced command, and its record names the key.
    let history = std::fs::read_to_string(
        fleet
            .home(&fleet.hosts[0])
            .join("app/.ats-hook/deploys.jsonl"),
    )
    .unwrap();
    let last: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["action"].as_str(), last["pusher"].as_str()),
        (Some("deploy"), Some("ci")),
        "{last}"
    );
    assert_eq!(
        ran[2],
        format!("{} {v2}", fleet.home(&fleet.hosts[0]).join("app").display())
    );

    // A fourth host joins: site.yml sets it up, changing nothing elsewhere, and the next roll
    // gives it the current release (and migrates nowhere, web1 being at v2 already).
    fleet.add_host(3);
    let setup = fleet.playbook("site.yml", &[]).success().stdout();
    let recap = changed(&setup);
    assert!(
        recap.iter().all(|(host, n)| (host == "web4") == (*n > 0)),
        "{setup}"
    );
    // In batches of two hosts this time.
    let out = roll_with(
        &fleet,
        &source,
        &v2,
        &ssh,
        "migrate",
        &["-e", "ats_hook_serial=2"],
    )
    .success()
    .stdout();
    assert_eq!(
        out.matches("PLAY [Roll a commit over the group]").count(),
        2,
        "{out}"
    );
    assert_eq!(version(&fleet, &fleet.hosts[3]), v2);
    assert_eq!(migrations().len(), 3);
}

/// A WSGI app that serves the commit its release was built from, read when gunicorn loads it.
const WSGI_APP: &str = r#"import pathlib

VERSION = pathlib.Path("version.txt").read_text().strip().encode()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(VERSION)))])
    return [VERSION]
"#;

/// gunicorn in a virtualenv on this machine that every host's app unit runs, from the wheels
/// tests/run fetched.
fn gunicorn(fleet: &Fleet) -> PathBuf {
    let venv = fleet.public.path().join("gunicorn");
    let mut make = Command::new("/usr/bin/python3");
    make.args(["-m", "venv"]).arg(&venv);
    run(&mut make, "python3 -m venv").success();
    let mut install = Command::new(venv.join("bin/pip"));
    install
        .args(["install", "--quiet", "--no-index", "--find-links"])
        .arg(crate::support::apps::wheelhouse())
        .arg("gunicorn");
    run(&mut install, "pip install gunicorn").success();
    venv.join("bin/gunicorn")
}

#[test]
fn the_role_runs_the_app_under_systemd_and_a_roll_fails_no_request() {
    use crate::support::apps::{get, Load, Systemd};

    // One systemd for the three hosts, as if each had its own: its /etc/systemd/system and
    // /etc/sudoers.d are empty folders of its own, where the role writes.
    let units = tempfile::tempdir().unwrap();
    let systemd = Systemd::boot_with_etc(units.path(), &["/etc/sudoers.d"]);
    let fleet = Fleet::in_namespace(3, Some(systemd.pid));
    let push_key = ci_key(&fleet);
    let gunicorn = gunicorn(&fleet);
    let port = closed_port();
    let public_key = std::fs::read_to_string(push_key.with_extension("pub")).unwrap();
    // Each host's unit is named after it: they share this systemd.
    let vars = format!(
        r#"ats_hook_service: "{{{{ inventory_hostname }}}}"
ats_hook_service_command: "{gunicorn} --chdir {{{{ ats_hook_root }}}}/current --workers 2 wsgi:application"
ats_hook_service_listen: "{{{{ ansible_host }}}}:{port}"
ats_hook_config: |
  [[step]]
  name = "build"
  run = 'printf "%s\n" "$ATS_COMMIT" > version.txt'
  [restart]
  systemctl = ["{{{{ ats_hook_service }}}}.service"]
  sudo = true
  [health]
  url = "http://{{{{ ansible_host }}}}:{port}/"
  expect_body = "{{commit}}"
  timeout = "30s"
ats_hook_keys:
  - name: ci
    public_key: "{}"
"#,
        public_key.trim(),
        gunicorn = gunicorn.display()
    );
    set_up(&fleet, &vars).success();
    for host in &fleet.hosts {
        let unit = format!("{}.service", host.name);
        let socket = format!("{}.socket", host.name);
        systemd
            .systemctl(&["is-enabled", &unit, &socket])
            .success()
            .stdout_has("enabled");
        systemd.systemctl(&["is-active", &socket]).success();
        // Not started before a release exists.
        systemd.systemctl(&["is-active", &unit]).failure();
    }
    // Idempotent with the units too.
    let again = fleet.playbook("site.yml", &[]).success().stdout();
    let recap = changed(&again);
    assert!(
        recap.len() == 3 && recap.iter().all(|(_, n)| *n == 0),
        "{again}"
    );

    let source = Clone::new_in(fleet.public.path(), "source");
    source.write("wsgi.py", WSGI_APP);
    let v1 = source.commit("serve the version");
    let ssh = ssh_with(&fleet, &push_key);
    let roll = |commit: &str| roll_with(&fleet, &source, commit, &ssh, "", &[]);
    roll(&v1).success();
    let urls: Vec<String> = fleet
        .hosts
        .iter()
        .map(|host| format!("http://{}:{port}/", host.address))
        .collect();
    for url in &urls {
        assert_eq!(get(url).as_deref(), Ok(v1.as_str()), "{url}");
    }
    // The rule the role wrote lets the deploy user restart its unit, and nothing more.
    let mut stop = systemd.nsenter(&[
        "su",
        "-s",
        "/bin/sh",
        "-c",
        "sudo -n systemctl stop web1.service",
        &fleet.hosts[0].user,
    ]);
    run(&mut stop, "sudo systemctl stop, as the deploy user")
        .failure()
        .stderr_has("sudo: a password is required");

    // Requests across the hosts, without pause, while v2 rolls over them one by one.
    let v2 = source.commit_file(
        "wsgi.py",
        &WSGI_APP.replace("text/plain", "text/plain; charset=utf-8"),
    );
    let load = Load::start(urls.clone());
    let rolled = roll(&v2);
    let served = load.stop();
    rolled.success();
    println!(
        "{} requests during the roll, {} failed, longest {:?}",
        served.requests(),
        served.failures.len(),
        served.longest
    );
    assert_eq!(served.failures, Vec::<String>::new());
    for (n, bodies) in served.bodies.iter().enumerate() {
        // Each host served v1, then v2, and never v1 again once it served v2.
        let switched = bodies.iter().position(|b| *b == v2);
        let switched = switched.unwrap_or_else(|| panic!("{} never served v2", urls[n]));
        assert!(switched > 0, "{} served v2 from the start", urls[n]);
        assert!(bodies[..switched].iter().all(|b| *b == v1), "{bodies:?}");
        assert!(bodies[switched..].iter().all(|b| *b == v2), "{bodies:?}");
    }
    for url in &urls {
        assert_eq!(get(url).as_deref(), Ok(v2.as_str()), "{url}");
    }

    // A changed unit: site.yml reloads it into systemd and restarts the app that runs, its
    // socket keeping the requests meanwhile.
    let main_pid = |unit: &str| {
        systemd
            .systemctl(&["show", "--property", "MainPID", "--value", unit])
            .success()
            .stdout()
            .trim()
            .to_string()
    };
    let before = main_pid("web1.service");
    let load = Load::start(urls.clone());
    let out = set_up(&fleet, &vars.replace("--workers 2", "--workers 3"));
    let served = load.stop();
    let out = out.success().stdout();
    assert!(
        out.contains("changed: [web1] => (item=web1.service)")
            && out.contains("ok: [web1] => (item=web1.socket)")
            && out.contains("TASK [ats_hook : Restart the app's changed units that run]"),
        "{out}"
    );
    assert_eq!(served.failures, Vec::<String>::new());
    assert!(served.bodies.iter().all(|bodies| !bodies.is_empty()));
    assert_ne!(main_pid("web1.service"), before);
    let unit = systemd
        .systemctl(&["cat", "web1.service"])
        .success()
        .stdout();
    assert!(unit.contains("--workers 3"), "{unit}");
    for url in &urls {
        assert_eq!(get(url).as_deref(), Ok(v2.as_str()), "{url}");
    }
}

/// Directive lines only: no comments, no blank lines, continuations joined, spaces collapsed.
fn directives(text: &str) -> Vec<String> {
    text.replace("\\\n", " ")
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The role writes the units and the sudoers rule of contrib/, which README and the package
/// ship for installing by hand: rendered by ansible with contrib's names, they say the same.
#[test]
fn the_roles_units_and_sudoers_rule_are_contribs() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let role = contrib.join("ansible/roles/ats_hook");
    let dir = tempfile::tempdir().unwrap();
    let vars = serde_json::json!({
        "ats_hook_user": "deployer",
        "ats_hook_root": "/srv/app",
        "ats_hook_binary": "/usr/bin/ats-hook",
        "ats_hook_service": "app",
        "ats_hook_worker_command": "/srv/app/current/.venv/bin/celery --app app worker --loglevel INFO",
    });
    let ansible = ansible_playbook().with_file_name("ansible");
    for (template, unit, expected) in [
        ("app.service.j2", "app.service", "systemd/app.service"),
        ("app.socket.j2", "app.socket", "systemd/app.socket"),
        (
            "app-worker.service.j2",
            "app-worker.service",
            "systemd/app-worker.service",
        ),
        ("sudoers.j2", "sudoers", "sudoers/ats-hook-app"),
    ] {
        let dest = dir.path().join(unit);
        let mut cmd = command(&ansible, dir.path());
        cmd.args(["localhost", "-c", "local", "-i", "localhost,"])
            .args(["-m", "ansible.builtin.template", "-a"])
            .arg(format!(
                "src={} dest={}",
                role.join("templates").join(template).display(),
                dest.display()
            ))
            .arg("-e")
            .arg(format!("@{}", role.join("defaults/main.yml").display()))
            .arg("-e")
            .arg(format!("@{}", role.join("vars/main.yml").display()))
            .arg("-e")
            .arg(vars.to_string())
            .arg("-e")
            .arg(format!(
                "ansible_python_interpreter={}",
                ansible.with_file_name("python3").display()
            ))
            .current_dir(dir.path())
            .env("ANSIBLE_HOME", dir.path().join("ansible-home"))
            .env("ANSIBLE_LOCAL_TEMP", dir.path().join("ansible-tmp"))
            .env("ANSIBLE_REMOTE_TEMP", dir.path().join("ansible-remote-tmp"));
        run(&mut cmd, format!("ansible -m template {template}")).success();
        let rendered = std::fs::read_to_string(&dest).unwrap();
        let mut ours = directives(&rendered);
        let mut theirs = directives(&std::fs::read_to_string(contrib.join(expected)).unwrap());
        if unit == "sudoers" {
            // Each rule's alias is named after its service: several apps share /etc/sudoers.d.
            ours = ours
                .iter()
                .map(|l| l.replace("ATS_HOOK_APP", "ALIAS"))
                .collect();
            theirs = theirs
                .iter()
                .map(|l| l.replace("ATS_HOOK_APP", "ALIAS"))
                .collect();
        }
        assert_eq!(
            ours, theirs,
            "{template} against contrib/{expected}:\n{rendered}"
        );
    }
}

/// The GitHub Actions variant that rolls over a group: its deploy job's script, run as the
/// runner would run it, from the app's checkout holding the playbooks and the inventory, with
/// only the deploy key and the hosts' keys: no login on the hosts, no key of the control node.
#[test]
fn the_fleet_workflow_rolls_with_the_deploy_key_alone_and_fails_naming_the_host() {
    let (fleet, source, ssh) = fleet_with_app(2);
    let script = workflow_deploy_script(
        "deploy-fleet.yml",
        r#"
assert deploy["concurrency"] == {"group": "deploy-production", "cancel-in-progress": False}
assert env == {name: "${{ secrets.%s }}" % name for name in ["SSH_DEPLOYMENT_KEY", "KNOWN_DEPLOYMENT_HOSTS"]}, env
assert any("ansible-core" in s.get("run", "") for s in deploy["steps"])
"#,
    );
    // The app's repository: its code, the playbooks, and an inventory that names the hosts and
    // nothing that logs in.
    let playbooks = source.dir.join("deploy/ansible");
    crate::support::files::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/ansible"),
        &playbooks,
    );
    let mut inventory = fleet.group();
    inventory.push_str("\n[app:vars]\nats_hook_migrate_step=migrate\n");
    std::fs::write(playbooks.join("inventory.ini"), inventory).unwrap();
    source.write("app.py", "1\n");
    let v1 = source.commit("first version, with its deploy playbooks");

    let runner = tempfile::tempdir().unwrap();
    let job = |sha: &str| {
        let mut path = ansible_playbook().parent().unwrap().as_os_str().to_owned();
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut cmd = command("bash", runner.path());
        cmd.arg("-c")
            .arg(&script)
            .current_dir(&source.dir)
            .env("PATH", path)
            .env("GITHUB_SHA", sha)
            .env(
                "SSH_DEPLOYMENT_KEY",
                std::fs::read_to_string(fleet.public.path().join("push_key")).unwrap(),
            )
            .env(
                "KNOWN_DEPLOYMENT_HOSTS",
                std::fs::read_to_string(&fleet.known_hosts).unwrap(),
            )
            .env("ANSIBLE_LOCAL_TEMP", runner.path().join("ansible-tmp"))
            .env(
                "ANSIBLE_REMOTE_TEMP",
                runner.path().join("ansible-remote-tmp"),
            )
            .env("ANSIBLE_HOME", runner.path().join("ansible-home"));
        run(&mut cmd, "the fleet workflow's deploy job")
    };
    let out = job(&v1).success().stdout();
    for host in &fleet.hosts {
        assert_eq!(version(&fleet, host), v1, "{}", host.name);
    }
    assert!(!out.contains("DIFFERS"), "{out}");
    let ran = std::fs::read_to_string(fleet.public.path().join("migrations-ran")).unwrap();
    assert_eq!(ran.lines().count(), 1, "{ran}");

    // The second host's build fails: the job fails naming it, and shows the group split.
    std::fs::write(fleet.home(&fleet.hosts[1]).join("app/fail-here"), "").unwrap();
    let v2 = source.commit_file("app.py", "2\n");
    let failed = job(&v2);
    failed.failure();
    let out = failed.stdout();
    assert!(out.contains("fatal: [web2 -> localhost]: FAILED!"), "{out}");
    assert!(out.contains("::error::the roll stopped"), "{out}");
    assert!(out.contains("DIFFERS"), "{out}");
    assert_eq!(version(&fleet, &fleet.hosts[0]), v2);
    assert_eq!(version(&fleet, &fleet.hosts[1]), v1);

    // rollback.yml to a commit no host ever had live refuses the first host by name, and
    // changes nothing.
    let never = source.commit_file("app.py", "3\n");
    let refused = fleet_rollback(&fleet, &source, &never, &ssh);
    refused.failure();
    let out = refused.stdout();
    assert!(
        out.contains(&format!(
            "web1 has no release of {} that went live: deploy it with deploy.yml instead",
            &never[..7]
        )),
        "{out}"
    );
    assert_eq!(version(&fleet, &fleet.hosts[0]), v2);
    assert_eq!(version(&fleet, &fleet.hosts[1]), v1);
}

/// The play run again after the deploy user planted symlinks at the paths the role's tasks
/// open: what it puts in place is written as the user, what it cannot do safely it refuses,
/// and nothing of root's is read or changed.
#[test]
fn the_play_run_again_against_a_hostile_deploy_user_changes_nothing_outside() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fleet = Fleet::new(1);
    let key = fleet.public.path().join("ci_key");
    let mut keygen = Command::new("ssh-keygen");
    keygen
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f"])
        .arg(&key);
    run(&mut keygen, "ssh-keygen").success();
    let vars = fleet.public.path().join("vars.yml");
    std::fs::write(&vars, app_vars(&fleet, &key)).unwrap();
    let extra = ["-e", &format!("@{}", vars.display())];
    fleet.playbook("site.yml", &extra).success();

    let host = &fleet.hosts[0];
    let home = fleet.home(host);
    let secret = fleet.public.path().join("root-secret");
    std::fs::write(&secret, "root-secret-line\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let folder = fleet.public.path().join("root-folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("authorized_keys"), "root-keys\n").unwrap();
    let roots = || {
        let file = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (std::fs::read(p).ok(), m.uid(), m.mode())
        };
        (
            file(&secret),
            file(&folder),
            file(&folder.join("authorized_keys")),
        )
    };
    let before = roots();
    let plant = |script: &str| {
        let mut su = Command::new("su");
        su.args(["-s", "/bin/sh", "-c", script, &host.user]);
        run(&mut su, format!("as {}: {script}", host.user)).success();
    };

    // The config gone, its temporary name a link to root's file: the play writes the config
    // as the user, and root's file stays as it was.
    plant(&format!(
        "set -e; rm {repo}/ats-hook.toml; ln -s {secret} {repo}/ats-hook.toml.new",
        repo = home.join("app.git").display(),
        secret = secret.display()
    ));
    fleet.playbook("site.yml", &extra).success();
    assert_eq!(roots(), before);
    let config = home.join("app.git/ats-hook.toml");
    let meta = std::fs::symlink_metadata(&config).unwrap();
    let user = nix::unistd::User::from_name(&host.user).unwrap().unwrap();
    assert!(meta.is_file());
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (user.uid.as_raw(), 0o640)
    );

    // `~/.ssh` a link to a folder of root's: the keys task refuses, by name; root's folder
    // and its file stay as they were.
    plant(&format!(
        "set -e; rm -rf ~/.ssh; ln -s {} ~/.ssh",
        folder.display()
    ));
    let refused = fleet.playbook("site.yml", &extra);
    refused.failure();
    assert!(
        refused.stdout().contains("is a symlink or not a folder"),
        "{}",
        refused.stdout()
    );
    assert_eq!(roots(), before);
}
