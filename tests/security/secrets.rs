//! Secrets stay the deploy user's: a malformed env file is reported by line, never by its text,
//! and the config, the history and the logs are unreadable for other local users.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use pretty_assertions::assert_eq;

use crate::support::system::Public;
use crate::support::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o777
}

#[test]
fn a_malformed_env_file_is_reported_by_line_never_by_its_text() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n[env]\nfile = \"shared/.env\"\n[[step]]\nname = \"mark\"\nrun = \"touch $ATS_DEPLOY_ROOT/ran\"\n");
    std::fs::create_dir_all(server.root.join("shared")).unwrap();
    for (text, line) in [
        // Not KEY=VALUE.
        ("PORT=8000\n# a comment\nhunter2-and-more\nDB=x\n", 3),
        // A quote left open: dotenvy's own message would carry the rest of the file.
        ("PORT=8000\nSECRET=\"hunter2\nTOKEN=s3cr3t-token\n", 2),
    ] {
        std::fs::write(server.root.join("shared/.env"), text).unwrap();
        let clone = server.clone(&format!("work{line}"));
        clone.commit_file("a", text);
        let push = clone.push_args(&["--force", "main"]);
        push.stderr_has(&format!(
            "malformed env file `{}` at line {line}",
            server.root.join("shared/.env").display()
        ))
        .stderr_lacks("hunter2")
        .stderr_lacks("s3cr3t");
        let record = server.last_record();
        assert_eq!(record["state"], "failed");
        let all = serde_json::to_string(&record).unwrap();
        assert!(!all.contains("hunter2") && !all.contains("s3cr3t"), "{all}");
        for log in std::fs::read_dir(server.root.join(".ats-hook/logs")).unwrap() {
            let log = std::fs::read_to_string(log.unwrap().path()).unwrap();
            assert!(!log.contains("hunter2") && !log.contains("s3cr3t"), "{log}");
        }
        assert!(!server.root.join("ran").exists());
    }
}

#[test]
fn the_config_the_history_and_the_logs_are_private() {
    let public = Public::new();
    let repo = public.path().join("app.git");
    public
        .ats(&["install", "--repo", repo.to_str().unwrap()])
        .success();
    let root = public.path().join("app");
    assert_eq!(mode(&repo.join("ats-hook.toml")), 0o640);
    assert_eq!(mode(&root.join(".ats-hook")), 0o700);

    let clone = Clone::new_in(public.path(), "work");
    clone
        .git(&["remote", "add", "staging", repo.to_str().unwrap()])
        .success();
    // An older deploy root, its state folder open to all: the next deploy closes it.
    std::fs::set_permissions(
        root.join(".ats-hook"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        repo.join("ats-hook.toml"),
        format!("[deploy]\nroot = \"{}\"\n", root.display()),
    )
    .unwrap();
    clone.commit_file("a", "1\n");
    clone.push().success().stderr_has("ats-hook: deployed");
    assert_eq!(mode(&root.join(".ats-hook")), 0o700);
    assert_eq!(mode(&root.join(".ats-hook/deploys.jsonl")), 0o600);
    for log in std::fs::read_dir(root.join(".ats-hook/logs")).unwrap() {
        assert_eq!(mode(&log.unwrap().path()), 0o600);
    }

    // `check` warns about a webhook's token that every local user can read.
    std::fs::write(
        repo.join("ats-hook.toml"),
        format!(
            "[deploy]\nroot = \"{}\"\n[notify]\nwebhook = \"https://hooks.example/T0/secret-token\"\n",
            root.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        repo.join("ats-hook.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    public
        .ats(&["check", "--repo", repo.to_str().unwrap()])
        .success()
        .stdout_has("holds a webhook URL (a token) and every local user can read it")
        .stdout_lacks("secret-token");
    std::fs::set_permissions(
        repo.join("ats-hook.toml"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    public
        .ats(&["check", "--repo", repo.to_str().unwrap()])
        .success()
        .stdout_lacks("every local user can read it");
}
