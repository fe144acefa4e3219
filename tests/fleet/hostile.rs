//! The play run again against a deploy user who was hostile in between changes nothing
//! outside what is the user's.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;
use std::process::Command;

use super::*;

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
