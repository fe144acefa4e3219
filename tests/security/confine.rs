//! Confined steps (`deploy.confine_steps`): the pushed code a step runs, as the deploy user,
//! can write its release, its build and the shared paths, and nothing else of the user's: no
//! hook, no key, no other release, no history.

use crate::support::system::{Public, User};

const PROBE: &str = r#"
{
  cat ~/.ssh/id_ed25519 2>/dev/null || echo no-key
  touch "$REPO/hooks/pre-receive" 2>/dev/null && echo hook-written || echo no-hook
  echo x > "$ATS_DEPLOY_ROOT/.ats-hook/planted" 2>/dev/null && echo state-written || echo no-state
  echo releases: $(ls "$ATS_DEPLOY_ROOT/releases" | wc -l)
  echo m > "$ATS_DEPLOY_ROOT/shared/media/m" && echo shared-ok
  echo ok > built && echo release-ok
} > probe.txt
"#;

#[test]
fn a_confined_step_writes_its_release_and_shared_paths_only() {
    crate::support::system::require_root();
    assert!(
        std::process::Command::new("bwrap")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "bwrap is missing: tests/run installs bubblewrap"
    );
    let public = Public::new();
    let user = User::create();
    let repo = user.home.join("app.git");
    let root = user.home.join("app");
    public.install_for(&repo, &user);
    std::fs::write(user.home.join("probe.sh"), PROBE).unwrap();
    // The probe lives in the deploy user's home, which confined steps do not see: it is let
    // in through `confine_read`.
    let config = format!(
        "[deploy]\nroot = \"{root}\"\nconfine_steps = true\nconfine_read = [\"{home}/probe.sh\"]\n\
         [shared]\npaths = [\"media\"]\n\
         [[step]]\nname = \"probe\"\nrun = \"REPO={repo} sh {home}/probe.sh\"\n\
         [[step]]\nname = \"build\"\nrun = \"mkdir -p build && echo b > build/x\"\noutputs = [\"build\"]\n",
        root = root.display(),
        repo = repo.display(),
        home = user.home.display(),
    );
    std::fs::write(repo.join("ats-hook.toml"), config).unwrap();
    std::os::unix::fs::chown(repo.join("ats-hook.toml"), Some(user.uid()), None).unwrap();
    // Pushed by the deploy user itself, who holds a key in `~/.ssh`.
    let push = |n: u32| {
        user.sh(&format!(
            "set -e; mkdir -p ~/.ssh; echo PRIVATE-KEY > ~/.ssh/id_ed25519; \
             cd ~; [ -d work ] || git init -q -b main work; cd work; \
             echo {n} > app.py; git add .; git -c user.name=u -c user.email=u@example.com commit -qm v{n}; \
             git push -q {} main 2>&1",
            repo.display()
        ))
    };

    for n in 1..=2 {
        let pushed = push(n);
        pushed.success();
        let probe = std::fs::read_to_string(root.join("current/probe.txt"))
            .unwrap_or_else(|err| panic!("{err}: {}", pushed.stdout()));
        for line in [
            "no-key",
            "no-hook",
            "no-state",
            "releases: 1",
            "shared-ok",
            "release-ok",
        ] {
            assert!(probe.lines().any(|l| l == line), "{line} in:\n{probe}");
        }
        assert!(!probe.contains("PRIVATE-KEY"), "{probe}");
    }
    assert!(!repo.join("hooks/pre-receive").exists());
    assert!(!root.join(".ats-hook/planted").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("shared/media/m")).unwrap(),
        "m\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/build/x")).unwrap(),
        "b\n"
    );
}
