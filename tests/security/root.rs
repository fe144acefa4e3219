//! Root's commands against a hostile deploy user, who planted symlinks at the paths those
//! commands open (SECURITY.md, "root acts on a deploy user's files only as that user"): each is
//! refused or done as the user, with a message saying what to repair, and nothing of root's is
//! read, printed, changed or given away.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pretty_assertions::assert_eq;

use crate::support::system::{Public, User};
use crate::support::*;

/// A deploy user with a repository set up by root's `install`, and root's files it aims at.
struct Hostile {
    public: Public,
    user: User,
    repo: PathBuf,
    root: PathBuf,
    /// A root-only file (think `/etc/shadow`).
    secret: PathBuf,
    /// A root-owned folder with a file in it (think `/root/.ssh` or `/etc`).
    folder: PathBuf,
}

/// What a path is: its content (for a file), owner and mode, read without following it.
fn state(path: &Path) -> (Option<String>, u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let content = meta
        .is_file()
        .then(|| std::fs::read_to_string(path).unwrap());
    (content, meta.uid(), meta.mode())
}

impl Hostile {
    fn new() -> Hostile {
        let public = Public::new();
        let user = User::create();
        let repo = public.path().join("srv/app.git");
        let root = public.path().join("srv/app");
        public.install_for(&repo, &user);
        let secret = public.path().join("secret");
        std::fs::write(&secret, "root-secret-line\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let folder = public.path().join("root-folder");
        std::fs::create_dir(&folder).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(folder.join("authorized_keys"), "root-keys\n").unwrap();
        Hostile {
            public,
            user,
            repo,
            root,
            secret,
            folder,
        }
    }

    fn roots_files(&self) -> Vec<(Option<String>, u32, u32)> {
        vec![
            state(&self.secret),
            state(&self.folder),
            state(&self.folder.join("authorized_keys")),
        ]
    }

    /// Runs `script` as the deploy user, with `$SECRET`, `$FOLDER`, `$REPO` and `$ROOT` set.
    fn plant(&self, script: &str) {
        self.user
            .sh(&format!(
                "set -e; SECRET={}; FOLDER={}; REPO={}; ROOT={}; {script}",
                self.secret.display(),
                self.folder.display(),
                self.repo.display(),
                self.root.display()
            ))
            .success();
    }

    fn key(&self) -> PathBuf {
        let key = self.public.path().join("key");
        if !key.exists() {
            let made = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci@example", "-f"])
                .arg(&key)
                .status()
                .unwrap();
            assert!(made.success());
        }
        key.with_extension("pub")
    }

    fn keys(&self, action: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "keys",
            action,
            "--repo",
            self.repo.to_str().unwrap(),
            "--user",
            &self.user.name,
        ];
        args.extend_from_slice(extra);
        self.public.ats(&args)
    }

    fn add_key(&self) -> Run {
        let key = self.key();
        self.keys("add", &["--public-key", key.to_str().unwrap()])
    }
}

#[test]
fn keys_never_follow_a_symlink_in_the_users_home() {
    let hostile = Hostile::new();
    let before = hostile.roots_files();
    let ssh = hostile.user.home.join(".ssh");

    // `authorized_keys -> /etc/shadow`: nothing read, nothing written.
    hostile.plant("mkdir -p ~/.ssh; ln -s $SECRET ~/.ssh/authorized_keys");
    for run in [
        hostile.add_key(),
        hostile.keys("list", &[]),
        hostile.keys("remove", &["ci@example"]),
    ] {
        run.failure()
            .stderr_has("is a symlink")
            .stderr_has("remove it (`rm ")
            .stderr_lacks("root-secret");
    }
    assert!(std::fs::symlink_metadata(ssh.join("authorized_keys"))
        .unwrap()
        .file_type()
        .is_symlink());

    // `~/.ssh -> /root/.ssh` (or `/etc`): not entered, not chmodded, not chowned.
    hostile.plant("rm -rf ~/.ssh; ln -s $FOLDER ~/.ssh");
    hostile
        .add_key()
        .failure()
        .stderr_has("is a symlink or not a folder");
    hostile
        .keys("list", &[])
        .failure()
        .stderr_has("is a symlink or not a folder");

    // A hard link to root's file is refused too (where the kernel lets a user make one).
    hostile.plant(
        "rm -f ~/.ssh; mkdir -m 700 ~/.ssh; ln $SECRET ~/.ssh/authorized_keys 2>/dev/null || true",
    );
    if std::fs::symlink_metadata(ssh.join("authorized_keys")).is_ok() {
        hostile.add_key().failure().stderr_has("a hard link");
    }
    assert_eq!(hostile.roots_files(), before);

    // Lines that are not keys are never copied: refused by number, their text not shown.
    hostile.plant("rm -f ~/.ssh/authorized_keys; printf '# mine\\nSECRET=hunter2\\n\\nalso not a key\\n' > ~/.ssh/authorized_keys");
    let planted = std::fs::read_to_string(ssh.join("authorized_keys")).unwrap();
    hostile
        .add_key()
        .failure()
        .stderr_has("has lines that are not keys (line 2, 4)")
        .stderr_lacks("hunter2");
    assert_eq!(
        std::fs::read_to_string(ssh.join("authorized_keys")).unwrap(),
        planted
    );

    // Repaired, it works, and the file and its folder are the user's and private.
    hostile.plant("printf '# mine\\n' > ~/.ssh/authorized_keys");
    hostile
        .add_key()
        .success()
        .stdout_has("this key is code execution as");
    let (_, uid, mode) = state(&ssh.join("authorized_keys"));
    assert_eq!((uid, mode & 0o777), (hostile.user.uid(), 0o600));
    let (_, uid, mode) = state(&ssh);
    assert_eq!((uid, mode & 0o777), (hostile.user.uid(), 0o700));
    assert_eq!(hostile.roots_files(), before);
}

#[test]
fn install_run_again_writes_nothing_through_the_users_symlinks() {
    let hostile = Hostile::new();
    let before = hostile.roots_files();
    // The config's and the hook's temporary names lead to root's files; the config and the
    // hook are gone, so the next run writes both.
    hostile.plant(
        "rm $REPO/ats-hook.toml $REPO/hooks/post-receive; \
         ln -s $SECRET $REPO/ats-hook.toml.new; \
         ln -s $SECRET $REPO/hooks/post-receive.ats-hook-new",
    );
    hostile
        .public
        .ats(&[
            "install",
            "--repo",
            hostile.repo.to_str().unwrap(),
            "--user",
            &hostile.user.name,
        ])
        .success()
        .stdout_has("did write the config")
        .stdout_has("did link the hook");
    assert_eq!(hostile.roots_files(), before);
    let (text, uid, mode) = state(&hostile.repo.join("ats-hook.toml"));
    assert!(text.unwrap().contains("[deploy]"));
    assert_eq!((uid, mode & 0o777), (hostile.user.uid(), 0o640));

    // The env file's folder leads to a folder of root's: as the user, install cannot write
    // there, and says so.
    hostile.plant("rm -rf $ROOT/shared; ln -s $FOLDER $ROOT/shared");
    hostile
        .public
        .ats(&["install", "--repo", hostile.repo.to_str().unwrap()])
        .failure()
        .stderr_has("failed to create");
    assert!(!hostile.folder.join(".env").exists());
    assert_eq!(hostile.roots_files(), before);

    // An env file outside the deploy root is refused outright.
    hostile.plant(
        "printf '[deploy]\\nroot = \"%s\"\\n[env]\\nfile = \"/etc/nologin\"\\n' $ROOT > $REPO/ats-hook.toml",
    );
    hostile
        .public
        .ats(&["install", "--repo", hostile.repo.to_str().unwrap()])
        .success()
        .stderr_has("must be a relative path inside the deploy root");
    assert!(!Path::new("/etc/nologin").exists());
}

#[test]
fn install_gives_roots_leftovers_to_the_user_without_following_links() {
    let public = Public::new();
    let user = User::create();
    // The admin made the repository as root; a folder in it became the user's, who linked
    // root's file into it.
    let repo = public.path().join("srv/app.git");
    let mut init = command("git", public.path());
    init.args(["init", "--quiet", "--bare", "-b", "main"])
        .arg(&repo);
    run(&mut init, "git init --bare").success();
    let secret = public.path().join("secret");
    std::fs::write(&secret, "root-secret-line\n").unwrap();
    std::fs::create_dir(repo.join("extra")).unwrap();
    std::os::unix::fs::chown(repo.join("extra"), Some(user.uid()), None).unwrap();
    user.sh(&format!(
        "ln -s {} {}/extra/link",
        secret.display(),
        repo.display()
    ))
    .success();

    public
        .ats(&[
            "install",
            "--repo",
            repo.to_str().unwrap(),
            "--user",
            &user.name,
        ])
        .success()
        .stdout_has(&format!("did give `{}` to `{}`", repo.display(), user.name));
    assert_eq!(
        std::fs::metadata(repo.join("HEAD")).unwrap().uid(),
        user.uid()
    );
    assert_eq!(
        std::fs::symlink_metadata(repo.join("extra/link"))
            .unwrap()
            .uid(),
        user.uid()
    );
    assert_eq!(
        std::fs::metadata(&secret).unwrap().uid(),
        0,
        "the link's target was given away"
    );

    // A repository of a third user's is not given to this one.
    let other = User::create();
    let theirs = public.path().join("srv/theirs.git");
    public
        .ats(&[
            "install",
            "--repo",
            theirs.to_str().unwrap(),
            "--user",
            &other.name,
        ])
        .success();
    public
        .ats(&[
            "install",
            "--repo",
            theirs.to_str().unwrap(),
            "--user",
            &user.name,
        ])
        .failure()
        .stderr_has(&format!(
            "belongs to `{}`, not to `{}`",
            other.name, user.name
        ));
    assert_eq!(
        std::fs::metadata(theirs.join("HEAD")).unwrap().uid(),
        other.uid()
    );
}

#[test]
fn check_and_status_as_root_read_and_run_only_as_the_user() {
    let hostile = Hostile::new();
    let home = hostile.user.home.display().to_string();
    // A branch tip to key at, an evil `python3` first in the env file's PATH, a key command
    // that says who runs it.
    hostile.plant(&format!(
        "cd ~; git init -q -b main work; cd work; echo 1 > requirements.txt; git add .; \
         git -c user.name=u -c user.email=u@example.com commit -qm one; \
         rm $REPO/hooks/post-receive; git push -q $REPO main; \
         mkdir -p ~/evilbin; printf '#!/bin/sh\\nid -u > {home}/evil-ran\\necho Python 3\\n' > ~/evilbin/python3; \
         chmod +x ~/evilbin/python3; \
         printf 'PATH={home}/evilbin:/usr/bin:/bin\\nLD_PRELOAD={home}/evil.so\\n' > $ROOT/shared/.env; \
         printf '[deploy]\\nroot = \"%s\"\\n[env]\\nfile = \"shared/.env\"\\n\
[[step]]\\nname = \"deps\"\\nrun = \"true\"\\noutputs = [\".venv\"]\\nkey = \"python3 --version\"\\n\
[[step]]\\nname = \"who\"\\nrun = \"true\"\\noutputs = [\"who\"]\\nkey = \"id -u > {home}/key-ran-as\"\\n' $ROOT > $REPO/ats-hook.toml"
    ));
    let repo = hostile.repo.to_str().unwrap();
    hostile
        .public
        .ats(&["check", "--repo", repo])
        .success()
        .stdout_has("outputs:   deps: at ");
    assert!(
        !hostile.user.home.join("evil-ran").exists(),
        "a key command ran the env file's PATH"
    );
    assert_eq!(
        std::fs::read_to_string(hostile.user.home.join("key-ran-as"))
            .unwrap()
            .trim(),
        hostile.user.uid().to_string(),
        "check ran the user's key command as someone else"
    );

    // The config, the history and the env file lead to root's file: read as the user, they
    // cannot be, and nothing of it is printed.
    hostile.plant("mv $REPO/ats-hook.toml $REPO/real.toml; ln -s $SECRET $REPO/ats-hook.toml");
    for command in ["check", "status", "releases", "log"] {
        hostile
            .public
            .ats(&[command, "--repo", repo])
            .failure()
            .stderr_has("ermission denied")
            .stderr_lacks("root-secret");
    }
    hostile.plant(
        "rm $REPO/ats-hook.toml; mv $REPO/real.toml $REPO/ats-hook.toml; \
         mkdir -p $ROOT/.ats-hook; ln -s $SECRET $ROOT/.ats-hook/deploys.jsonl",
    );
    hostile
        .public
        .ats(&["status", "--repo", repo])
        .failure()
        .stderr_lacks("root-secret");
    assert_eq!(state(&hostile.secret).1, 0);
}
