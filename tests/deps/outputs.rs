//! The output store with steps that build with plain shell: reuse by key whichever release
//! built it, rebuilds when any part of the key changes, failed builds never reused, nested
//! outputs, strays, what `check`, `status` and `releases` show, pruning and rollback. The same
//! with real pip, npm and gunicorn is in deps.rs.

use std::collections::BTreeSet;

use pretty_assertions::assert_eq;

use crate::support::*;

/// A step that "installs" requirements.txt and vendor/ into `deps/`, counting its runs, with
/// the content of `ROOT/toolchain` as its key command's output.
const INSTALL: &str = r#"
[deploy]
root = "ROOT"
keep_releases = KEEP
[[step]]
name = "install"
run = "mkdir deps && cat requirements.txt vendor/lib.txt > deps/installed && echo \"$ATS_RELEASE_ID\" >> \"$ATS_DEPLOY_ROOT/install-runs\" && test ! -e \"$ATS_DEPLOY_ROOT/fail\""
inputs = ["requirements.txt", "vendor"]
outputs = ["deps"]
key = "cat \"$ATS_DEPLOY_ROOT/toolchain\""
[[step]]
name = "use"
run = "cat deps/installed"
"#;

fn install_server(keep: usize) -> Server {
    let server = Server::new();
    server.config(&INSTALL.replace("KEEP", &keep.to_string()));
    std::fs::create_dir_all(&server.root).unwrap();
    std::fs::write(server.root.join("toolchain"), "python 3.11\n").unwrap();
    server
}

fn runs(server: &Server) -> Vec<String> {
    std::fs::read_to_string(server.root.join("install-runs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn outputs_are_reused_by_key_whichever_release_built_them() {
    let server = install_server(5);
    let clone = server.clone("work");
    clone.write("requirements.txt", "flask==3.0\n");
    clone.write("vendor/lib.txt", "lib v1\n");
    clone.commit_file("app.py", "0\n");
    let push = clone.push();
    push.success()
        .stderr_has("install: building deps (key ")
        .stderr_has(
            "requirements.txt, vendor and `cat \"$ATS_DEPLOY_ROOT/toolchain\"` not built before)",
        )
        .stderr_has("use | flask==3.0");
    let first = server.live().unwrap();
    assert_eq!(runs(&server), std::slice::from_ref(&first));
    assert_eq!(server.build_of(&first, "install", "deps"), first);

    // Code changes only: the build of the first release is linked, the step does not run.
    for n in 1..3 {
        clone.commit_file("app.py", &format!("{n}\n"));
        let push = clone.push();
        push.success().stderr_has(&format!(
            "install: reused deps (requirements.txt, vendor and `cat \"$ATS_DEPLOY_ROOT/toolchain\"` unchanged since {first})"
        ));
        let live = server.live().unwrap();
        assert_eq!(server.build_of(&live, "install", "deps"), first);
        let record = server.last_record();
        assert_eq!(record["steps"][0]["status"], "reused");
        assert_eq!(record["steps"][0]["output"]["build"], first.as_str());
        assert_eq!(record["steps"][0]["output"]["paths"][0], "deps");
        assert!(record["steps"][0]["inputs"]
            .as_str()
            .unwrap()
            .starts_with("requirements.txt@"));
    }
    assert_eq!(runs(&server).len(), 1);

    // Each part of the key, changed on its own, builds anew: an input file, a file in an input
    // folder, the key command's output, the step's command.
    clone.commit_file("requirements.txt", "flask==3.1\n");
    clone.push().success().stderr_has("install: building deps");
    assert_eq!(server.live_file("deps/installed"), "flask==3.1\nlib v1\n");
    clone.commit_file("vendor/lib.txt", "lib v2\n");
    clone.push().success().stderr_has("install: building deps");
    assert_eq!(server.live_file("deps/installed"), "flask==3.1\nlib v2\n");
    std::fs::write(server.root.join("toolchain"), "python 3.12\n").unwrap();
    clone.commit_file("app.py", "3\n");
    clone.push().success().stderr_has("install: building deps");
    server.config(
        &INSTALL
            .replace("KEEP", "5")
            .replace("mkdir deps &&", "mkdir deps && true &&"),
    );
    clone.commit_file("app.py", "4\n");
    clone.push().success().stderr_has("install: building deps");
    assert_eq!(runs(&server).len(), 5);

    // Back to the first inputs, toolchain and command: the first release is pruned by now,
    // but its build is still linked by a kept release, so it is reused, not rebuilt.
    server.config(&INSTALL.replace("KEEP", "5"));
    std::fs::write(server.root.join("toolchain"), "python 3.11\n").unwrap();
    clone.write("requirements.txt", "flask==3.0\n");
    clone.write("vendor/lib.txt", "lib v1\n");
    clone.commit("first inputs again");
    clone.push().success().stderr_has(&format!(
        "install: reused deps (requirements.txt, vendor and `cat \"$ATS_DEPLOY_ROOT/toolchain\"` unchanged since {first})"
    ));
    assert!(!server.releases().contains(&first));
    let live = server.live().unwrap();
    assert_eq!(server.build_of(&live, "install", "deps"), first);
    assert_eq!(server.live_file("deps/installed"), "flask==3.0\nlib v1\n");
    assert_eq!(runs(&server).len(), 5);
}

#[test]
fn a_build_that_fails_is_never_reused_and_the_live_release_keeps_its_own() {
    let server = install_server(5);
    let clone = server.clone("work");
    clone.write("requirements.txt", "flask==3.0\n");
    clone.write("vendor/lib.txt", "lib v1\n");
    let good = clone.commit("first");
    clone.push().success();
    let live = server.live().unwrap();

    // The same inputs, built anew because the lockfile changed, fail.
    std::fs::write(server.root.join("fail"), "").unwrap();
    clone.commit_file("requirements.txt", "flask==3.1\n");
    let push = clone.push();
    push.success().stderr_has(&format!(
        "deploy FAILED at step install (exit 1); {} is still live",
        &good[..7]
    ));
    assert_eq!(server.live(), Some(live.clone()));
    assert_eq!(server.live_file("deps/installed"), "flask==3.0\nlib v1\n");
    // Its folder is gone, no key names it, the live release's build is as it was.
    assert_eq!(server.builds("install"), BTreeSet::from([live.clone()]));
    let keys: Vec<_> = std::fs::read_dir(server.root.join("outputs/install"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");

    // The same key again: built from scratch, not reused.
    std::fs::remove_file(server.root.join("fail")).unwrap();
    clone.commit_file("app.py", "again\n");
    clone
        .push()
        .success()
        .stderr_has("install: building deps")
        .stderr_lacks("install: reused");
    assert_eq!(server.live_file("deps/installed"), "flask==3.1\nlib v1\n");
}

#[test]
fn nested_outputs_see_the_release_and_keep_nothing_else() {
    let server = Server::new();
    server.config(
        r#"
[deploy]
root = "ROOT"
[[step]]
name = "npm"
run = "cat frontend/package.json > frontend/src/generated.js; echo x > frontend/lockfile.txt; mkdir frontend/node_modules && cp frontend/package.json frontend/node_modules/installed && echo stray > stray.txt && pwd"
inputs = ["frontend/package.json"]
outputs = ["frontend/node_modules"]
"#,
    );
    let clone = server.clone("work");
    clone.write("frontend/package.json", "{\"v\": 1}\n");
    clone.write("frontend/src/app.js", "app\n");
    clone.write(
        "frontend/node_modules/tracked.txt",
        "committed by mistake\n",
    );
    clone.commit_file("README", "readme\n");
    let push = clone.push();
    let live = server.live().unwrap();
    let build = server.root.join("outputs/npm").join(&live);
    push.success()
        .stderr_has(&format!("npm | {}", build.display()))
        .stderr_has(
            "npm: removed what it wrote beside its outputs: frontend/lockfile.txt, stray.txt",
        )
        .stderr_has("npm: tracked `frontend/node_modules` replaced by the link to its build");
    assert_eq!(
        server.live_file("frontend/node_modules/installed"),
        "{\"v\": 1}\n"
    );
    assert_eq!(server.live_file("frontend/src/app.js"), "app\n");
    assert!(!server.root.join("current/stray.txt").exists());
    // The build holds its output and the folders above it, nothing of the mirror.
    let mut held = Vec::new();
    for entry in walk(&build) {
        held.push(entry);
    }
    held.sort();
    assert_eq!(
        held,
        [
            "frontend",
            "frontend/node_modules",
            "frontend/node_modules/installed"
        ]
    );
    // What the step wrote through the mirror's links lands in the release, and only there: an
    // undeclared output, not part of the build.
    assert_eq!(
        server.live_file("frontend/src/generated.js"),
        "{\"v\": 1}\n"
    );
    assert!(!server.root.join("current/frontend/lockfile.txt").exists());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.file_name().unwrap().to_string_lossy().into_owned();
        out.push(rel.clone());
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path).into_iter().map(|r| format!("{rel}/{r}")));
        }
    }
    out
}

#[test]
fn a_step_that_does_not_build_its_outputs_fails_the_deploy() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"install\"\nrun = \"echo forgot\"\noutputs = [\".venv\"]\n",
    );
    let clone = server.clone("work");
    clone.commit_file("app.py", "0\n");
    let push = clone.push();
    push.success()
        .stderr_has("step `install` succeeded but did not build its output `.venv`")
        .stderr_has("deploy FAILED; nothing is live yet");
    assert_eq!(server.live(), None);
    assert!(server.builds("install").is_empty());
}

#[test]
fn check_status_and_releases_show_the_builds() {
    let server = install_server(5);
    let clone = server.clone("work");
    clone.write("requirements.txt", "flask==3.0\n");
    clone.write("vendor/lib.txt", "lib v1\n");
    clone.commit("first");
    clone.push().success();
    let first = server.live().unwrap();
    let key = server.last_record()["steps"][0]["output"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    server.ats(&["check"]).success().stdout_has(&format!(
        "outputs:   install: at {} (main), key {}: reused from build {first}",
        &clone.head()[..7],
        &key[..12]
    ));
    std::fs::write(server.root.join("toolchain"), "python 3.12\n").unwrap();
    server
        .ats(&["check"])
        .success()
        .stdout_has("key ")
        .stdout_has(": not stored, the next deploy builds it");

    clone.commit_file("requirements.txt", "flask==3.1\n");
    clone.push().success();
    let status = server.ats(&["status"]);
    status
        .success()
        .stdout_has("outputs:     2 stored builds, ");
    let json: serde_json::Value =
        serde_json::from_str(&server.ats(&["status", "--json"]).stdout()).unwrap();
    assert_eq!(json["outputs"]["builds"], 2);
    assert!(json["outputs"]["bytes"].as_u64().unwrap() > 0);

    let releases = server.ats(&["releases", "--json"]);
    let releases: serde_json::Value = serde_json::from_str(&releases.stdout()).unwrap();
    assert_eq!(releases[0]["outputs"][0]["step"], "install");
    assert_eq!(releases[0]["outputs"][0]["build"], first.as_str());
    assert_eq!(releases[0]["outputs"][0]["key"], key.as_str());
    assert_ne!(releases[1]["outputs"][0]["key"], key.as_str());
    server
        .ats(&["releases"])
        .success()
        .stdout_has(&format!("install={}", &key[..12]));
}

#[test]
fn pruning_keeps_the_builds_kept_releases_use_and_rollback_refuses_a_lost_one() {
    let server = install_server(2);
    let clone = server.clone("work");
    clone.write("vendor/lib.txt", "lib\n");
    for n in 0..5 {
        clone.commit_file("requirements.txt", &format!("v{n}\n"));
        clone.push().success();
        // Every build in the store is one a release on disk links to, and the releases'
        // builds are all there.
        assert_eq!(
            server.builds("install"),
            server.builds_in_use("install", "deps"),
            "after push {n}"
        );
    }
    let push = clone.push_args(&["--force", "HEAD~1:main"]);
    push.success().stderr_has("install: reused deps");
    assert_eq!(server.live_file("deps/installed"), "v3\nlib\n");

    // A build lost by hand: rollback refuses to switch to a release that would not run.
    let target = server
        .releases()
        .into_iter()
        .find(|r| Some(r) != server.live().as_ref())
        .unwrap();
    let build = server.build_of(&target, "install", "deps");
    std::fs::remove_dir_all(server.root.join("outputs/install").join(&build)).unwrap();
    server
        .ats(&["rollback"])
        .failure()
        .stderr_has(&format!("`{target}` runs on the build"))
        .stderr_has("which is gone; refusing to switch to it");
}

#[test]
fn gate_mode_builds_from_the_quarantine_and_dry_run_tells_the_key() {
    let server = install_server(5);
    server.gate();
    let clone = server.clone("work");
    clone.write("requirements.txt", "flask==3.0\n");
    clone.write("vendor/lib.txt", "lib v1\n");
    let first = clone.commit("first");
    clone.push().success().stderr_has("install: building deps");
    let built = server.live().unwrap();
    assert_eq!(
        server.tip("refs/heads/main").as_deref(),
        Some(first.as_str())
    );
    clone.commit_file("app.py", "1\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("install: reused deps (requirements.txt, vendor and `cat \"$ATS_DEPLOY_ROOT/toolchain\"` unchanged since {built})"));
    // A failed build in gate mode: the push is rejected, nothing is stored for its key.
    std::fs::write(server.root.join("fail"), "").unwrap();
    clone.commit_file("requirements.txt", "flask==3.1\n");
    clone
        .push()
        .failure()
        .stderr_has("deploy FAILED at step install (exit 1)");
    assert_eq!(server.builds("install"), BTreeSet::from([built.clone()]));

    // `deploy --dry-run` computes the key of the commit it would deploy, changing nothing.
    let live = server.live();
    server
        .ats(&["deploy", "--dry-run"])
        .success()
        .stdout_has("outputs:   install: at ")
        .stdout_has(&format!(": reused from build {built}"));
    assert_eq!(server.live(), live);
}
