//! `site.yml` sets every host up, and a second run changes nothing; a host that cannot be
//! reached fails by name; the Ansible content is lint clean.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;

use super::*;

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

/// `ats_hook_apps`: one repository, two apps, each with its deploy root set up for the deploy
/// user and its sections under `[apps.NAME.…]`; the host's ats-hook reads the config the role
/// wrote, and a second run changes nothing.
#[test]
fn site_yml_sets_up_several_apps_from_one_repository() {
    let fleet = Fleet::new(1);
    let vars = fleet.public.path().join("apps.json");
    let apps = serde_json::json!({
        "ats_hook_apps": [
            {
                "name": "backend",
                "root": "{{ ats_hook_home }}/backend",
                "deploy": "path = \"backend\"\npaths = [\"libs\"]\n",
                "config": "[env]\nAPP = \"backend\"\n\n[[step]]\nname = \"check\"\nrun = \"test -f app.py\"\n",
            },
            {
                "name": "frontend",
                "root": "{{ ats_hook_home }}/frontend",
                "deploy": "path = \"frontend\"\n",
            },
        ]
    });
    std::fs::write(&vars, apps.to_string()).unwrap();
    let extra = format!("@{}", vars.display());
    fleet.playbook("site.yml", &["-e", &extra]).success();
    let host = &fleet.hosts[0];
    let home = fleet.home(host);
    let config = std::fs::read_to_string(home.join("app.git/ats-hook.toml")).unwrap();
    for section in [
        "[apps.backend.deploy]",
        "[apps.backend.env]",
        "[[apps.backend.step]]",
        "[apps.frontend.deploy]",
    ] {
        assert!(config.contains(section), "{section} in:\n{config}");
    }
    use std::os::unix::fs::MetadataExt;
    let user = nix::unistd::User::from_name(&host.user).unwrap().unwrap();
    for app in ["backend", "frontend"] {
        let releases = home.join(app).join("releases");
        assert!(releases.is_dir(), "{}", releases.display());
        assert_eq!(
            std::fs::metadata(home.join(app)).unwrap().uid(),
            user.uid.as_raw()
        );
    }
    let mut check = command(
        fleet.public.path().join("bin/installed-ats-hook"),
        fleet.public.path(),
    );
    check.arg("check").arg("--repo").arg(home.join("app.git"));
    run(&mut check, "ats-hook check")
        .success()
        .stdout_has("2 apps, deployed in this order: backend, frontend");

    let again = fleet
        .playbook("site.yml", &["-e", &extra])
        .success()
        .stdout();
    let recap = changed(&again);
    assert!(recap.iter().all(|(_, n)| *n == 0), "{again}");
}
