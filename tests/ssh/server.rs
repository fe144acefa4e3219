//! From an empty server to `git push staging main` over real SSH, with a deploy key that
//! can do nothing else; a submodule fetched with the deploy user's own key.

use crate::support::system::SshSetup;
use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;
use std::process::Command;

use super::*;

#[test]
fn a_new_server_deploys_a_push_over_ssh() {
    let setup = SshSetup::new("post-receive", CONFIG);
    // The server side as install and keys left it.
    let meta = std::fs::metadata(&setup.repo).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.uid(), setup.user.uid());
    assert!(git2::Repository::open_bare(&setup.repo).is_ok());
    assert_eq!(
        std::fs::read_link(setup.repo.join("hooks/post-receive")).unwrap(),
        setup.public.bin
    );
    for dir in ["releases", "shared", ".ats-hook"] {
        assert_eq!(
            std::fs::metadata(setup.root.join(dir)).unwrap().uid(),
            setup.user.uid(),
            "{dir}"
        );
    }
    let ssh_dir = setup.user.home.join(".ssh");
    assert_eq!(
        std::fs::metadata(&ssh_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let authorized = ssh_dir.join("authorized_keys");
    assert_eq!(
        std::fs::metadata(&authorized).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&authorized).unwrap().uid(),
        setup.user.uid()
    );
    let line = std::fs::read_to_string(&authorized).unwrap();
    assert!(
        line.starts_with(&format!(
            "restrict,command=\"{} ssh-gate --repo {} --key-name ats-hook-deploy@",
            setup.public.bin.display(),
            setup.repo.display()
        )),
        "{line}"
    );
    assert_eq!(
        std::fs::metadata(&setup.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(setup
        .keys_output
        .contains(&format!("[127.0.0.1]:{} ssh-ed25519 ", setup.sshd.port)));

    let clone = setup.clone();
    let sha = clone.commit_file("app.py", "print('hello')\n");
    let push = git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]);
    push.success()
        .stderr_has(&format!("remote: ats-hook: deployed {}", &sha[..7]));
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/version.txt"))
            .unwrap()
            .trim(),
        sha
    );
    let history = std::fs::read_to_string(setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    assert!(
        history.contains("\"pusher\":\"ats-hook-deploy@"),
        "the key's name is the pusher: {history}"
    );
    // The release belongs to the deploy user, who ran the hook.
    let live = std::fs::read_link(setup.root.join("current")).unwrap();
    assert_eq!(
        std::fs::metadata(setup.root.join(&live)).unwrap().uid(),
        setup.user.uid()
    );
    // Fetching the one repository is allowed too.
    git_over_ssh(&clone, &setup.ssh(), &["ls-remote", "staging"]).success();

    // `keys list` and `keys remove`: after removal the key cannot even connect to git.
    let repo = setup.repo.to_str().unwrap();
    let list = setup
        .public
        .ats(&["keys", "list", "--repo", repo, "--user", &setup.user.name]);
    list.success().stdout_has("SHA256:");
    let fingerprint = list.stdout().split_whitespace().next().unwrap().to_string();
    let remove = [
        "keys",
        "remove",
        "--repo",
        repo,
        "--user",
        &setup.user.name,
        &fingerprint,
    ];
    setup.public.ats(&remove).success();
    git_over_ssh(&clone, &setup.ssh(), &["ls-remote", "staging"]).failure();
    setup
        .public
        .ats(&remove)
        .failure()
        .stderr_has("no deploy key");
}

#[test]
fn the_deploy_key_can_do_nothing_else() {
    let setup = SshSetup::new("post-receive", CONFIG);
    let other = setup.user.home.join("other.git");
    setup
        .user
        .sh(&format!("git init -q --bare {}", other.display()))
        .success();
    let marker = setup.public.path().join("pwned");
    let mut known = std::fs::File::create(&setup.known_hosts).unwrap();
    use std::io::Write;
    for line in setup
        .keys_output
        .lines()
        .filter(|l| l.starts_with("[127.0.0.1]:"))
    {
        writeln!(known, "{line}").unwrap();
    }
    drop(known);

    let refused = "this deploy key may only push to or fetch from";
    let repo = setup.repo.display().to_string();
    // An interactive shell, and a shell command.
    setup
        .attempt(&[], None)
        .failure()
        .stderr_has("refused an interactive shell");
    // Asking for a terminal changes nothing: `restrict` refuses the pty, the gate the shell.
    setup
        .attempt(&["-tt"], None)
        .failure()
        .stderr_has("PTY allocation request failed");
    setup
        .attempt(&[], Some("ls -la"))
        .failure()
        .stderr_has(refused);
    setup
        .attempt(&[], Some(&format!("touch {}", marker.display())))
        .failure();
    // Another repository on the same server, directly and through `..`.
    setup
        .attempt(
            &[],
            Some(&format!("git-receive-pack '{}'", other.display())),
        )
        .failure()
        .stderr_has("is not that repository");
    setup
        .attempt(&[], Some(&format!("git-upload-pack '{repo}/../other.git'")))
        .failure()
        .stderr_has("`..` is not allowed");
    // Quoting tricks and command chaining.
    for trick in [
        format!("git-receive-pack '{repo}'; touch {}", marker.display()),
        format!("git-receive-pack '{repo}' && touch {}", marker.display()),
        format!("git-receive-pack \"$(touch {})\"", marker.display()),
        format!("git-receive-pack `touch {}`", marker.display()),
        format!("git-receive-pack '{repo}' '{repo}'"),
        format!("git-upload-archive '{repo}'"),
        format!("sh -c \"git-receive-pack '{repo}'\""),
    ] {
        setup
            .attempt(&[], Some(&trick))
            .failure()
            .stderr_has(refused);
    }
    assert!(!marker.exists(), "a refused command ran");
    // Port forwarding, which `restrict` denies.
    let forward = setup.attempt(&["-W", &format!("127.0.0.1:{}", setup.sshd.port)], None);
    forward.failure();
    assert!(
        forward.stderr().contains("forwarding") || forward.stderr().contains("prohibited"),
        "{}",
        forward.stderr()
    );

    // git itself, pushing to and fetching from the other repository, is refused.
    let server = Server::new();
    let clone = server.clone("attacker");
    clone.commit_file("x", "x");
    let other_url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        setup.user.name,
        setup.sshd.port,
        other.display()
    );
    git_over_ssh(&clone, &setup.ssh(), &["push", &other_url, "main"])
        .failure()
        .stderr_has(refused);
    git_over_ssh(&clone, &setup.ssh(), &["ls-remote", &other_url])
        .failure()
        .stderr_has(refused);
    assert!(
        git2::Repository::open_bare(&other).unwrap().head().is_err(),
        "the other repository received a push"
    );
    // And the allowed repository still works with the same key.
    let url = setup.url.clone();
    git_over_ssh(&clone, &setup.ssh(), &["push", &url, "main"])
        .success()
        .stderr_has("ats-hook: deployed");
}

/// A submodule fetched over real SSH with the deploy user's own key, from another account on
/// the same sshd (as from a git host where that key is a read-only deploy key).
#[test]
fn a_submodule_is_fetched_over_ssh_with_the_deploy_users_own_key() {
    use std::os::unix::fs::PermissionsExt;
    let config = "[deploy]\nroot = \"ROOT\"\nsubmodules = true\nsubmodule_urls = [\"ssh://\"]\n";
    let setup = SshSetup::new("post-receive", config);
    let host = crate::support::system::User::create();
    let chown = |path: &Path, user: &crate::support::system::User| {
        let mut cmd = Command::new("chown");
        cmd.arg("-R").arg(&user.name).arg(path);
        run(&mut cmd, "chown").success();
    };

    // The library on the git host's account.
    let lib = host.home.join("lib.git");
    let mut init = command("git", setup.public.path());
    init.args(["init", "-q", "--bare", "-b", "main"]).arg(&lib);
    run(&mut init, "git init --bare").success();
    let work = Clone::new_in(setup.public.path(), "lib-work");
    work.commit_file("lib.py", "over ssh\n");
    work.git(&["push", "-q", lib.to_str().unwrap(), "main"])
        .success();
    let lib_commit = work.head();
    chown(&lib, &host);

    // The deploy user's own key, which the git host accepts, and the host's key pinned.
    let ssh_dir = setup.user.home.join(".ssh");
    let own_key = ssh_dir.join("id_ed25519");
    let mut keygen = Command::new("ssh-keygen");
    keygen
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "deploy user", "-f"])
        .arg(&own_key);
    run(&mut keygen, "ssh-keygen").success();
    let host_key =
        std::fs::read_to_string(setup.sshd.host_keys.join("ssh_host_ed25519_key.pub")).unwrap();
    let mut key_type_and_body = host_key.split_whitespace();
    std::fs::write(
        ssh_dir.join("known_hosts"),
        format!(
            "[127.0.0.1]:{} {} {}\n",
            setup.sshd.port,
            key_type_and_body.next().unwrap(),
            key_type_and_body.next().unwrap()
        ),
    )
    .unwrap();
    chown(&ssh_dir, &setup.user);
    std::fs::set_permissions(&own_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let host_ssh = host.home.join(".ssh");
    std::fs::create_dir_all(&host_ssh).unwrap();
    std::fs::copy(
        own_key.with_extension("pub"),
        host_ssh.join("authorized_keys"),
    )
    .unwrap();
    chown(&host_ssh, &host);

    let clone = setup.clone();
    std::fs::create_dir_all(clone.dir.join("vendor/lib")).unwrap();
    clone.write(
        ".gitmodules",
        &format!(
            "[submodule \"lib\"]\n\tpath = vendor/lib\n\turl = ssh://{}@127.0.0.1:{}{}\n",
            host.name,
            setup.sshd.port,
            lib.display()
        ),
    );
    clone
        .git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{lib_commit},vendor/lib"),
        ])
        .success();
    clone.commit_file("app.py", "app\n");
    git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"])
        .success()
        .stderr_has(&format!(
            "submodule `vendor/lib`: fetching {}",
            &lib_commit[..7]
        ))
        .stderr_has("remote: ats-hook: deployed");
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/vendor/lib/lib.py")).unwrap(),
        "over ssh\n"
    );
}
