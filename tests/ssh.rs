//! From an empty server to `git push staging main` over real SSH, with a deploy key that can do
//! nothing else; and the GitHub Actions deploy job's shell, run for real against it.

use std::path::Path;
use std::process::Command;

use pretty_assertions::assert_eq;

use crate::support::system::SshSetup;
use crate::support::*;

const CONFIG: &str = r#"
[deploy]
root = "ROOT"
[[step]]
name = "build"
run = 'test ! -e broken || { echo "build broke" >&2; exit 5; }; printf "%s\n" "$ATS_COMMIT" > version.txt'
"#;

fn git_over_ssh(clone: &Clone, ssh: &str, args: &[&str]) -> Run {
    let mut cmd = command("git", &clone.dir);
    cmd.args(args)
        .current_dir(&clone.dir)
        .env("GIT_SSH_COMMAND", ssh);
    run(&mut cmd, format!("git {}", args.join(" ")))
}

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

/// The `run:` script of the deploy job in the shipped workflow, and the job's settings.
fn deploy_job_script() -> String {
    workflow_deploy_script(
        "deploy.yml",
        r#"
assert deploy["concurrency"]["group"] and deploy["concurrency"]["cancel-in-progress"] is False
for name in ["SSH_DEPLOYMENT_KEY", "KNOWN_DEPLOYMENT_HOSTS", "STAGING_REMOTE_REPO"]:
    assert env[name] == "${{ secrets.%s }}" % name, env
"#,
    )
}

fn run_deploy_job(setup: &SshSetup, clone: &Clone, script: &str) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = command("bash", home.path());
    cmd.arg("-c")
        .arg(script)
        .current_dir(&clone.dir)
        .env(
            "SSH_DEPLOYMENT_KEY",
            std::fs::read_to_string(&setup.key).unwrap(),
        )
        .env(
            "KNOWN_DEPLOYMENT_HOSTS",
            setup
                .keys_output
                .lines()
                .filter(|l| l.starts_with("[127.0.0.1]:"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .env("STAGING_REMOTE_REPO", &setup.url);
    run(&mut cmd, "the deploy job")
}

#[test]
fn the_workflow_deploy_job_passes_and_fails_with_the_deploy() {
    let script = deploy_job_script();
    for hook in ["post-receive", "pre-receive"] {
        let setup = SshSetup::new(hook, CONFIG);
        let clone = setup.clone();
        let sha = clone.commit_file("app.py", "v1");
        run_deploy_job(&setup, &clone, &script)
            .success()
            .stdout_has(&format!("ats-hook: deployed {}", &sha[..7]));
        assert_eq!(
            std::fs::read_to_string(setup.root.join("current/version.txt"))
                .unwrap()
                .trim(),
            sha
        );

        run_deploy_job(&setup, &clone, &script)
            .success()
            .stdout_has("nothing to deploy");

        clone.write("broken", "");
        clone.commit("broken");
        let job = run_deploy_job(&setup, &clone, &script);
        job.failure();
        match hook {
            "post-receive" => job.stdout_has("::error::the deploy did not succeed: ats-hook: deploy FAILED at step build (exit 5)"),
            _ => job.stdout_has("::error::git push failed"),
        };
        assert_eq!(
            std::fs::read_to_string(setup.root.join("current/version.txt"))
                .unwrap()
                .trim(),
            sha,
            "{hook}"
        );
    }
}

/// `ats-hook status|releases|log|rollback --remote staging` from the pusher's clone, through the
/// deploy key: it may read, and roll back only when added with `--allow-rollback`. Every other
/// command, option or repository stays refused.
#[test]
fn the_pusher_reads_status_releases_and_log_and_rolls_back_only_with_a_key_that_may() {
    let setup = SshSetup::new("post-receive", CONFIG);
    let clone = setup.clone();
    let v1 = clone.commit_file("app.py", "1\n");
    git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]).success();
    let first = setup.root.join("current").canonicalize().unwrap();
    let first = first.file_name().unwrap().to_str().unwrap().to_string();
    let v2 = clone.commit_file("app.py", "2\n");
    git_over_ssh(&clone, &setup.ssh(), &["push", "staging", "main"]).success();

    let ats = |ssh: &str, args: &[&str]| {
        let mut cmd = command(&setup.public.bin, setup.public.path());
        cmd.args(args)
            .current_dir(&clone.dir)
            .env("GIT_SSH_COMMAND", ssh);
        run(&mut cmd, format!("ats-hook {}", args.join(" ")))
    };
    // Without `--remote`, the clone is not mistaken for a server.
    ats(&setup.ssh(), &["status"])
        .failure()
        .stderr_has("is a clone of your app, not the server's bare repository")
        .stderr_has("--remote staging");

    let status = ats(&setup.ssh(), &["status", "--remote", "staging"]);
    status.success().stdout_has(&v2[..7]);
    let status = ats(&setup.ssh(), &["status", "--remote", "staging", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    assert_eq!(status["live"]["commit"], v2.as_str());
    let releases = ats(&setup.ssh(), &["releases", "--remote", "staging", "--json"]);
    let releases: serde_json::Value = serde_json::from_str(&releases.success().stdout()).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 2, "{releases}");
    ats(&setup.ssh(), &["log", "--remote", "staging"])
        .success()
        .stdout_has(&v1[..7])
        .stdout_has(&v2[..7]);
    // One deploy's output, found by the start of its commit.
    ats(&setup.ssh(), &["log", &v1[..7], "--remote", "staging"])
        .success()
        .stdout_has(&format!("deployed {}", &v1[..7]));

    // This key may not roll back.
    ats(&setup.ssh(), &["rollback", "--remote", "staging"])
        .failure()
        .stderr_has("this key may not roll back: add it with `ats-hook keys add --allow-rollback`");
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/version.txt")).unwrap(),
        format!("{v2}\n")
    );

    // A second key, added with `--allow-rollback`, may.
    let client = setup.public.path().join("client");
    let key = client.join("rollback_key");
    let keygen = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "release-manager",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let repo = setup.repo.to_str().unwrap();
    setup
        .public
        .ats(&[
            "keys",
            "add",
            "--repo",
            repo,
            "--user",
            &setup.user.name,
            "--public-key",
            key.with_extension("pub").to_str().unwrap(),
            "--allow-rollback",
        ])
        .success()
        .stdout_has("and roll it back");
    let roller = setup.sshd.ssh_command(&key, &setup.known_hosts);
    ats(&roller, &["rollback", "--remote", "staging"])
        .success()
        .stderr_has(&format!("release {first}, in "));
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/version.txt")).unwrap(),
        format!("{v1}\n")
    );
    let history = std::fs::read_to_string(setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(last["action"], "rollback");
    assert_eq!(last["pusher"], "release-manager");

    // What stays refused, with either key.
    let marker = setup.public.path().join("pwned");
    let other = setup.user.home.join("other.git");
    for request in [
        format!("ats-hook deploy --repo '{repo}'"),
        format!("ats-hook install --repo '{repo}'"),
        format!(
            "ats-hook status --repo '{repo}' --config {}",
            marker.display()
        ),
        format!("ats-hook status --repo '{}'", other.display()),
        format!("ats-hook status --repo '{repo}/../other.git'"),
        format!("ats-hook log ../../etc/passwd --repo '{repo}'"),
        format!("ats-hook status; touch {}", marker.display()),
        format!(
            "ats-hook status --repo '{repo}' && touch {}",
            marker.display()
        ),
        "ats-hook keys add --generate".to_string(),
        "ats-hook ssh-gate --repo /".to_string(),
    ] {
        setup
            .attempt(&[], Some(&request))
            .failure()
            .stderr_has("this deploy key may only push to or fetch from");
    }
    assert!(!marker.exists(), "a refused command ran");
}

/// Push options go through the SSH gate as git sent them: the note arrives byte for byte, and
/// a skip and a bad option act as they do on a local push.
#[test]
fn push_options_pass_through_the_ssh_gate_unchanged() {
    let config = format!("{CONFIG}skippable = true\n");
    let setup = SshSetup::new("post-receive", &config);
    let clone = setup.clone();
    let sha = clone.commit_file("app.py", "1\n");
    let note = "release 1.2 — $(touch /tmp/ats-hook-pwned) 'quoted' \"double\"";
    git_over_ssh(
        &clone,
        &setup.ssh(),
        &[
            "push",
            "-o",
            &format!("ats.note={note}"),
            "-o",
            "ats.skip=build",
            "staging",
            "main",
        ],
    )
    .success()
    .stderr_has("build: skipped, as the push asked")
    .stderr_has(&format!("remote: ats-hook: deployed {}", &sha[..7]));
    let history = std::fs::read_to_string(setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(record["note"], note);
    assert_eq!(record["steps"][0]["status"], "skipped");
    assert!(!setup.root.join("current/version.txt").exists());
    assert!(!Path::new("/tmp/ats-hook-pwned").exists());

    clone.commit_file("app.py", "2\n");
    git_over_ssh(
        &clone,
        &setup.ssh(),
        &["push", "-o", "ats.restart-please", "staging", "main"],
    )
    .stderr_has("nothing deployed: unknown push option `ats.restart-please`");
    let after = std::fs::read_to_string(setup.root.join(".ats-hook/deploys.jsonl")).unwrap();
    assert_eq!(
        after, history,
        "a push with a bad option deployed something"
    );
    assert_eq!(
        std::fs::read_to_string(setup.root.join("current/app.py")).unwrap(),
        "1\n"
    );
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
