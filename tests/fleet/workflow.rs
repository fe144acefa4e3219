//! The fleet workflow rolls with the deploy key alone and fails naming the host.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;

use super::*;

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
