//! The rule of SECURITY.md kept by reading the sources: the code root runs on a deploy user's
//! files writes, creates, chmods and chowns nothing itself; only `src/sys/owner/` may, and every
//! such call elsewhere goes through it.

/// The files of the commands root may run on a deploy user's files (`install`'s root part,
/// `keys`, `check`, `status`, `releases`, `log`, and the dispatch that loads their config).
const ROOT_RUN: [&str; 7] = [
    "src/cmd/install/as_root.rs",
    "src/cmd/keys.rs",
    "src/cmd/check.rs",
    "src/cmd/status.rs",
    "src/cmd/releases.rs",
    "src/cmd/log.rs",
    "src/cmd/mod.rs",
];

const FORBIDDEN: [&str; 7] = [
    "fs::write",
    "File::create",
    "create_dir_all",
    "set_permissions",
    "chown",
    "symlink(",
    "rename(",
];

#[test]
fn root_run_commands_touch_a_users_files_only_through_owner() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for file in ROOT_RUN {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                let mut rest = code;
                while let Some(at) = rest.find(word) {
                    if !rest[..at].ends_with("owner::") {
                        found.push(format!("{file}:{}: {}", n + 1, line.trim()));
                    }
                    rest = &rest[at + word.len()..];
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "root-run code touching files outside `owner`:\n{}",
        found.join("\n")
    );
    // And the module itself is where the no-follow opens are.
    let owner = ["mod.rs", "user_dir.rs"]
        .map(|file| std::fs::read_to_string(dir.join("src/sys/owner").join(file)).unwrap())
        .concat();
    for needed in ["O_NOFOLLOW", "O_EXCL", "fchown", "renameat", "setresuid"] {
        assert!(owner.contains(needed), "src/sys/owner/ lost `{needed}`");
    }
}
