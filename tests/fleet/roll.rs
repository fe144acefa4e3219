//! `deploy.yml` rolls a commit host by host, migrating once, and stops at a failure; a wrong
//! key or a host never set up stops the roll by name before any change.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::process::Command;

use super::*;

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
    // The role's `ats_hook_jobs_installer: cron`: each deploy user's own crontab gets the
    // release's jobs, written by the hook as that user.
    source.write(
        "schedule.toml",
        "[[job]]\nname = \"nightly\"\nschedule = \"30 2 * * *\"\nrun = \"true\"\n",
    );
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
        let table = Command::new("crontab")
            .args(["-u", &host.user, "-l"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(
            table.contains(&format!(
                "# BEGIN ats-hook {}",
                fleet.home(host).join("app").display()
            )) && table.contains("30 2 * * * cd ")
                && table.contains(" nightly\n"),
            "{}: {table}",
            host.name
        );
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
