//! `install`, `keys add`, `remote add`: bad input gets a clear error and changes nothing;
//! a second run changes nothing; a run that stopped half way is completed by the next.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use pretty_assertions::assert_eq;

use crate::support::system::{Public, User};
use crate::support::*;

#[test]
fn install_sets_up_and_a_second_run_changes_nothing() {
    let public = Public::new();
    let user = User::create();
    let repo = public.path().join("srv/app.git");
    let repo_arg = repo.to_str().unwrap();

    let dry = public.ats(&[
        "install",
        "--repo",
        repo_arg,
        "--user",
        &user.name,
        "--dry-run",
    ]);
    dry.success()
        .stdout_has("would create the bare repository")
        .stdout_has("would write the config");
    assert!(!repo.exists(), "--dry-run changed something");

    public
        .ats(&["install", "--repo", repo_arg, "--user", &user.name])
        .success()
        .stdout_has("did link the hook");
    let root = public.path().join("srv/app");
    assert!(root.join("releases").is_dir() && root.join("shared").is_dir());
    let config = std::fs::read_to_string(repo.join("ats-hook.toml")).unwrap();
    assert!(
        config.contains(&format!("root = \"{}\"", root.display())),
        "{config}"
    );
    assert_eq!(
        std::fs::metadata(repo.join("HEAD")).unwrap().uid(),
        user.uid()
    );
    // The env file the template reads exists before the first push: empty, the deploy
    // user's, readable by nobody else.
    let env = std::fs::metadata(root.join("shared/.env")).unwrap();
    assert_eq!((env.len(), env.mode() & 0o777), (0, 0o600));
    assert_eq!(env.uid(), user.uid());

    public
        .ats(&["install", "--repo", repo_arg, "--user", &user.name])
        .success()
        .stdout_has("nothing to change");

    // A config the admin edited is never overwritten.
    std::fs::write(
        repo.join("ats-hook.toml"),
        "[deploy]\nroot = \"/elsewhere\"\n",
    )
    .unwrap();
    std::os::unix::fs::chown(repo.join("ats-hook.toml"), Some(user.uid()), None).unwrap();
    public
        .ats(&["install", "--repo", repo_arg, "--user", &user.name])
        .success()
        .stdout_has("nothing to change");
    assert_eq!(
        std::fs::read_to_string(repo.join("ats-hook.toml")).unwrap(),
        "[deploy]\nroot = \"/elsewhere\"\n"
    );

    // Switching to gate mode replaces the post-receive link: one push deploys once.
    public
        .ats(&["install", "--repo", repo_arg, "--hook", "pre-receive"])
        .success()
        .stdout_has("did remove");
    assert!(repo.join("hooks/pre-receive").exists());
    assert!(!repo.join("hooks/post-receive").exists());
    // --copy puts the binary itself in place of the link.
    let copy = [
        "install",
        "--repo",
        repo_arg,
        "--hook",
        "pre-receive",
        "--copy",
    ];
    public.ats(&copy).success();
    assert!(!std::fs::symlink_metadata(repo.join("hooks/pre-receive"))
        .unwrap()
        .file_type()
        .is_symlink());
    public.ats(&copy).success().stdout_has("nothing to change");
}

#[test]
fn install_refuses_what_it_must_not_touch() {
    let public = Public::new();
    let base = public.path();
    // A working copy.
    let work = Clone::new_in(base, "work");
    public
        .ats(&["install", "--repo", work.dir.to_str().unwrap()])
        .failure()
        .stderr_has("is a working copy, not a bare repository");
    // A file.
    std::fs::write(base.join("file.git"), "").unwrap();
    public
        .ats(&["install", "--repo", base.join("file.git").to_str().unwrap()])
        .failure()
        .stderr_has("is a file, not a bare repository");
    // A folder with other things in it.
    std::fs::create_dir_all(base.join("photos.git")).unwrap();
    std::fs::write(base.join("photos.git/cat.jpg"), "").unwrap();
    public
        .ats(&[
            "install",
            "--repo",
            base.join("photos.git").to_str().unwrap(),
        ])
        .failure()
        .stderr_has("is a folder but not a git repository");
    // A user that does not exist.
    public
        .ats(&[
            "install",
            "--repo",
            base.join("a.git").to_str().unwrap(),
            "--user",
            "no-such-user-ats",
        ])
        .failure()
        .stderr_has("no user `no-such-user-ats` on this machine");
    // A deploy root that cannot be created.
    public
        .ats(&[
            "install",
            "--repo",
            base.join("b.git").to_str().unwrap(),
            "--root",
            base.join("file.git/app").to_str().unwrap(),
        ])
        .failure()
        .stderr_has("is not a folder");
    // A hook that is someone else's.
    let repo = base.join("c.git");
    public
        .ats(&["install", "--repo", repo.to_str().unwrap()])
        .success();
    std::fs::remove_file(repo.join("hooks/post-receive")).unwrap();
    std::fs::write(repo.join("hooks/post-receive"), "#!/bin/sh\nmake deploy\n").unwrap();
    public
        .ats(&["install", "--repo", repo.to_str().unwrap()])
        .failure()
        .stderr_has("exists and is not ats-hook");
    assert_eq!(
        std::fs::read_to_string(repo.join("hooks/post-receive")).unwrap(),
        "#!/bin/sh\nmake deploy\n"
    );
    // Nothing was created for the refused ones.
    for name in ["a.git", "b.git", "a", "b"] {
        assert!(!base.join(name).exists(), "{name} was created");
    }
}

#[test]
fn a_run_that_failed_half_way_is_completed_by_the_next() {
    let public = Public::new();
    let repo = public.path().join("app.git");
    let root = public.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    // Something in the way of the deploy root's `releases` folder.
    std::fs::write(root.join("releases"), "").unwrap();
    public
        .ats(&["install", "--repo", repo.to_str().unwrap()])
        .failure()
        .stderr_has("failed to create");
    assert!(
        repo.join("hooks/post-receive").exists(),
        "the steps before the failure are done"
    );
    std::fs::remove_file(root.join("releases")).unwrap();
    let again = public.ats(&["install", "--repo", repo.to_str().unwrap()]);
    again
        .success()
        .stdout_has("did create")
        .stdout_has("releases");
    assert!(
        !again.stdout().contains("bare repository"),
        "{}",
        again.stdout()
    );
    public
        .ats(&["install", "--repo", repo.to_str().unwrap()])
        .success()
        .stdout_has("nothing to change");
}

#[test]
fn keys_add_refuses_malformed_and_duplicate_keys() {
    let public = Public::new();
    let user = User::create();
    let repo = user.home.join("app.git");
    public.install_for(&repo, &user);
    let repo_arg = repo.to_str().unwrap();
    let key_file = public.path().join("key.pub");
    let add = [
        "keys",
        "add",
        "--repo",
        repo_arg,
        "--user",
        &user.name,
        "--public-key",
        key_file.to_str().unwrap(),
    ];

    std::fs::write(&key_file, "ssh-ed25519 not-base64!! me@laptop\n").unwrap();
    public
        .ats(&add)
        .failure()
        .stderr_has("is not a usable public key")
        .stderr_has("does not decode");
    std::fs::write(
        &key_file,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    public
        .ats(&add)
        .failure()
        .stderr_has("this is a private key");
    assert!(
        !user.home.join(".ssh/authorized_keys").exists(),
        "a refused key was written"
    );

    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dev@laptop", "-f"])
        .arg(public.path().join("key"))
        .status()
        .unwrap();
    assert!(made.success());
    public.ats(&add).success().stdout_has("(dev@laptop)");
    let before = std::fs::read_to_string(user.home.join(".ssh/authorized_keys")).unwrap();
    public.ats(&add).failure().stderr_has("is already in");
    assert_eq!(
        std::fs::read_to_string(user.home.join(".ssh/authorized_keys")).unwrap(),
        before
    );
    public
        .ats(&[
            "keys",
            "add",
            "--repo",
            public.path().join("nope.git").to_str().unwrap(),
            "--user",
            &user.name,
            "--generate",
        ])
        .failure()
        .stderr_has("no repository at");

    // Without --private-key-file, --generate prints what CI needs, the private key included.
    let host_keys = public.path().join("hostkeys");
    std::fs::create_dir_all(&host_keys).unwrap();
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(host_keys.join("ssh_host_ed25519_key"))
        .status()
        .unwrap();
    assert!(made.success());
    let generate = [
        "keys",
        "add",
        "--repo",
        repo_arg,
        "--user",
        &user.name,
        "--generate",
        "--host",
        "srv.example",
        "--host-keys",
        host_keys.to_str().unwrap(),
    ];
    public
        .ats(&generate)
        .success()
        .stdout_has("SSH_DEPLOYMENT_KEY:\n-----BEGIN OPENSSH PRIVATE KEY-----")
        .stdout_has("KNOWN_DEPLOYMENT_HOSTS:\nsrv.example ssh-ed25519 ")
        .stdout_has(&format!(
            "STAGING_REMOTE_REPO:\nssh://{}@srv.example{}",
            user.name,
            repo.canonicalize().unwrap().display()
        ));
}

#[test]
fn remote_add_refuses_bad_urls_unreachable_hosts_and_silent_changes() {
    let public = Public::new();
    let clone = Clone::new_in(public.path(), "laptop");
    let remote_add = |args: &[&str]| {
        let mut cmd = command(&public.bin, public.path());
        cmd.args(["remote", "add"])
            .args(args)
            .current_dir(&clone.dir);
        run(&mut cmd, format!("remote add {}", args.join(" ")))
    };
    remote_add(&["staging", "not a url"])
        .failure()
        .stderr_has("is not an SSH remote");
    remote_add(&["staging", "http://example.com/app.git"])
        .failure()
        .stderr_has("is not an SSH remote");
    let port = closed_port();
    let known = public.path().join("known_hosts");
    remote_add(&[
        "staging",
        &format!("ssh://deployer@127.0.0.1:{port}/srv/app.git"),
        "--scan",
        "--known-hosts",
        known.to_str().unwrap(),
    ])
    .failure()
    .stderr_has(&format!(
        "could not read a host key from `127.0.0.1` port {port}"
    ));
    assert!(
        clone.git(&["remote"]).stdout().trim().is_empty(),
        "a refused remote was added"
    );
    assert!(!known.exists());

    let host_key = "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDn5X3sR/SMUKlYKiScpuWVm1UZ2vOBAqaZvdx+XgOqw";
    let url = "ssh://deployer@127.0.0.1:2222/srv/app.git";
    remote_add(&[
        "staging",
        url,
        "--host-key",
        host_key,
        "--known-hosts",
        known.to_str().unwrap(),
    ])
    .success()
    .stdout_has("added remote `staging`");
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("{host_key}\n")
    );
    remote_add(&["staging", url])
        .success()
        .stdout_has("already points at");
    remote_add(&["staging", "ssh://deployer@other:22/srv/app.git"])
        .failure()
        .stderr_has("pass `--force` to change it");
    remote_add(&["staging", "ssh://deployer@other:22/srv/app.git", "--force"])
        .success()
        .stdout_has("changed remote");
    // A different key for a pinned host is refused, not silently added.
    let other_key = "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1oL3Vo3k0y0b1mLrN8w6iS5Fn5vJmCS2b6m1Jj2xVx";
    remote_add(&[
        "prod",
        url,
        "--host-key",
        other_key,
        "--known-hosts",
        known.to_str().unwrap(),
    ])
    .failure()
    .stderr_has("already holds a different ssh-ed25519 key");
}

#[test]
fn the_sudoers_snippet_is_valid() {
    let visudo = std::path::Path::new("/usr/sbin/visudo");
    assert!(
        visudo.exists(),
        "visudo is missing: install sudo (tests/run does)"
    );
    for name in ["ats-hook-app", "ats-hook-handover"] {
        let snippet = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/sudoers")
            .join(name);
        let mut cmd = std::process::Command::new(visudo);
        cmd.arg("-c").arg("-f").arg(&snippet);
        run(&mut cmd, format!("visudo -cf {name}")).success();
    }
}

/// root on a deploy user's root is refused before it makes anything, with the command that
/// works; run through sudo as the owner, the history names who asked.
#[test]
fn root_is_refused_on_a_deploy_users_root_and_sudo_names_who_asked() {
    let public = Public::new();
    let user = User::create();
    let repo = public.path().join("srv/app.git");
    let root = public.path().join("srv/app");
    public.install_for(&repo, &user);
    std::fs::write(
        repo.join("ats-hook.toml"),
        format!(
            "[deploy]\nroot = \"{}\"\n[[step]]\nname = \"who\"\nrun = \"id -un > ran-as\"\n",
            root.display()
        ),
    )
    .unwrap();
    // root pushes through the local path, past git's own ownership check: the hook runs as
    // root, and refuses.
    let clone = Clone::new_in(public.path(), "laptop");
    clone.commit_file("app.py", "1\n");
    let global = public.path().join("gitconfig");
    std::fs::write(&global, "[safe]\n\tdirectory = *\n").unwrap();
    let mut git = command("git", public.path());
    git.args(["push", repo.to_str().unwrap(), "main"])
        .current_dir(&clone.dir)
        .env("GIT_CONFIG_GLOBAL", &global);
    let push = run(&mut git, "git push as root");
    push.stderr_has(&format!(
        "refusing to run as root on `{}`, which belongs to `{}`",
        root.display(),
        user.name
    ))
    .stderr_has(&format!("push as `{}`", user.name));
    assert!(!root.join("current").exists());
    assert_eq!(std::fs::read_dir(root.join("releases")).unwrap().count(), 0);
    assert!(!root.join(".ats-hook/deploys.jsonl").exists());

    // By hand, the message names the command that works.
    let repo_arg = repo.to_str().unwrap();
    public
        .ats(&["deploy", "--repo", repo_arg])
        .failure()
        .stderr_has(&format!(
            "run it as the owner: `sudo -u {} ats-hook deploy --repo {repo_arg}`",
            user.name
        ));
    public
        .ats(&["rollback", "--repo", repo_arg])
        .failure()
        .stderr_has("refusing to run as root");
    // Reading needs no refusal.
    public.ats(&["status", "--repo", repo_arg]).success();

    // As the owner, the way sudo runs it: the history names the admin.
    Command::new("chown")
        .args(["-R", &user.name])
        .arg(&repo)
        .status()
        .unwrap();
    let deploy = Command::new("runuser")
        .args(["-u", &user.name, "--", "env", "SUDO_USER=admin-alice"])
        .arg(&public.bin)
        .args(["deploy", "--repo", repo_arg])
        .output()
        .unwrap();
    assert!(
        deploy.status.success(),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/ran-as"))
            .unwrap()
            .trim(),
        user.name
    );
    let history = std::fs::read_to_string(root.join(".ats-hook/deploys.jsonl")).unwrap();
    assert!(history.contains("\"pusher\":\"admin-alice\""), "{history}");
}

#[test]
fn install_handover_needs_a_serve_section_and_changes_nothing() {
    let server = Server::new();
    let before = std::fs::read_to_string(server.bare.join("ats-hook.toml")).unwrap();
    server
        .ats(&["install", "--handover"])
        .failure()
        .stderr_has("has no `[serve]`: the handover needs two slots and a proxy");
    assert_eq!(
        std::fs::read_to_string(server.bare.join("ats-hook.toml")).unwrap(),
        before
    );
    assert!(!server.root.exists());
}
