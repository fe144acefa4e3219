//! `node_modules` by real `npm ci` from a warm cache, reused while the lockfile holds.

use crate::support::apps::*;
use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;
use std::process::Command;

/// package-lock.json for is-number 6.0.0 (the fixture has 7.0.0), as npm wrote it.
const LOCK_6: &str = r#"{
  "name": "ats-hook-sample-node-app",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {
      "name": "ats-hook-sample-node-app",
      "version": "1.0.0",
      "dependencies": {
        "is-number": "6.0.0"
      }
    },
    "node_modules/is-number": {
      "version": "6.0.0",
      "integrity": "sha512-Wu1VHeILBK8KAWJUAiSZQX94GmOE45Rg6/538fKwiloUu21KncEkYGPqob2oSZ5mUT73vLGrHQjKw3KMPwfDzg==",
      "engines": {
        "node": ">=0.10.0"
      }
    }
  }
}
"#;

fn run_node_app(release: &Path) -> String {
    let mut cmd = Command::new("node");
    cmd.arg("app.js").current_dir(release);
    run(&mut cmd, "node app.js")
        .success()
        .stdout()
        .trim()
        .to_string()
}

#[test]
fn npm_ci_output_is_reused_while_the_lockfile_holds() {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm-cache");
    assert!(
        cache.is_dir(),
        "{} is missing: tests/run fills npm's cache",
        cache.display()
    );
    let server = Server::new();
    let config = example_config(
        "node-npm.toml",
        &[
            ("/srv/node-app", server.root.to_str().unwrap()),
            ("npm ci --omit=dev", "npm ci --omit=dev --offline"),
        ],
    );
    // No service to restart or probe here: the app runs from the release.
    let config = config.split("[restart]").next().unwrap().replace(
        "[env]\n",
        &format!("[env]\nnpm_config_cache = \"{}\"\n", cache.display()),
    );
    server.config(&config);
    let clone = server.clone("work");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-app");
    for file in ["package.json", "package-lock.json", "app.js"] {
        std::fs::copy(fixture.join(file), clone.dir.join(file)).unwrap();
    }
    clone.commit("a node app");
    clone
        .push()
        .success()
        .stderr_has("npm-ci: building node_modules")
        .stderr_has("check | is-number 7.0.0: 42 is a number: true");
    let first = server.live().unwrap();
    assert_eq!(
        run_node_app(&server.root.join("current")),
        "is-number 7.0.0: 42 is a number: true"
    );

    clone.commit_file(
        "app.js",
        &std::fs::read_to_string(fixture.join("app.js"))
            .unwrap()
            .replace("is a number", "is still a number"),
    );
    clone
        .push()
        .success()
        .stderr_has(&format!("npm-ci: reused node_modules (package.json, package-lock.json, .npmrc and `node --version` unchanged since {first})"));
    assert_eq!(
        run_node_app(&server.root.join("current")),
        "is-number 7.0.0: 42 is still a number: true"
    );

    clone.write(
        "package.json",
        &std::fs::read_to_string(fixture.join("package.json"))
            .unwrap()
            .replace("7.0.0", "6.0.0"),
    );
    clone.write("package-lock.json", LOCK_6);
    clone.commit("is-number 6");
    clone
        .push()
        .success()
        .stderr_has("npm-ci: building node_modules");
    assert_eq!(
        run_node_app(&server.root.join("current")),
        "is-number 6.0.0: 42 is still a number: true"
    );
    // The first release still runs on what it was deployed with.
    assert_eq!(
        run_node_app(&server.root.join("releases").join(&first)),
        "is-number 7.0.0: 42 is a number: true"
    );
    assert_eq!(server.builds("npm-ci").len(), 2);
}
