//! `deploy.path`: a release holds one folder's tree as its root, fast releases work on it, and
//! a push that leaves it (and its `deploy.paths`) unchanged deploys nothing.

use crate::support::*;
use pretty_assertions::assert_eq;

const CONFIG: &str = "[deploy]\nroot = \"ROOT\"\npath = \"backend\"\npaths = [\"libs/common\"]\n\
     [[step]]\nname = \"build\"\nrun = \"cat app.py libs/common/util.py > built.txt\"\n";

/// A repository with a backend, a frontend, shared libraries and docs.
fn monorepo(server: &Server) -> Clone {
    let clone = server.clone("work");
    clone
        .write("backend/app.py", "print('app v1')\n")
        .write("backend/requirements.txt", "flask\n")
        .write("frontend/package.json", "{}\n")
        .write("libs/common/util.py", "# util v1\n")
        .write("libs/other/x.py", "# other\n")
        .write("docs/index.md", "# docs\n");
    clone.commit("monorepo");
    clone
}

#[test]
fn a_release_holds_the_app_folder_as_its_root_with_its_shared_folders() {
    let server = Server::new();
    server.config(CONFIG);
    let clone = monorepo(&server);
    let commit = clone.head();
    clone
        .push()
        .success()
        .stderr_has(&format!("deployed {}", &commit[..7]));
    let live = server.live().unwrap();
    let release = server.root.join("releases").join(&live);
    let mut files = crate::releases::tracked(&release);
    files.retain(|f| f != "built.txt");
    assert_eq!(
        files,
        [
            "REVISION",
            "app.py",
            "libs/common/util.py",
            "requirements.txt"
        ]
    );
    // The step ran in the app's folder, and saw the shared folder at its own path.
    assert_eq!(
        server.live_file("built.txt"),
        "print('app v1')\n# util v1\n"
    );
    assert_eq!(server.live_file("REVISION"), format!("{commit}\n"));
    // The tree the release holds (the folder with `libs/common` added) was never written into
    // the repository: it holds nothing the pushed refs do not reach.
    let mut fsck = command("git", server.path());
    fsck.args(["fsck", "--no-reflogs", "--unreachable", "--no-progress"])
        .current_dir(&server.bare);
    let fsck = run(&mut fsck, "git fsck");
    fsck.success();
    assert_eq!(fsck.stdout().trim(), "", "objects no ref reaches");
    server
        .ats(&["check"])
        .success()
        .stdout_has("app:       the folder `backend` is each release's root, with `libs/common` at its own path");
}

#[test]
fn a_push_that_leaves_the_app_unchanged_deploys_nothing_and_says_so() {
    let server = Server::new();
    server.config(CONFIG).advertise_push_options();
    let clone = monorepo(&server);
    clone.push().success();
    let live = server.live().unwrap();
    let deployed = server.records().len();

    // Only docs, and a folder of `libs/` the app does not use: nothing to deploy.
    clone.write("libs/other/x.py", "# other v2\n");
    let docs = clone.commit_file("docs/index.md", "# docs v2\n");
    let push = clone.push();
    push.success().stderr_lacks("deploying");
    assert!(
        push.summary().contains(&format!(
            "backend and libs/common unchanged at {}: nothing to deploy",
            &docs[..7]
        )),
        "{}",
        push.stderr()
    );
    assert_eq!(server.live().unwrap(), live);
    assert_eq!(server.releases().len(), 1);
    let record = server.last_record();
    assert_eq!(record["state"], "unchanged");
    assert_eq!(record["commit"], docs.as_str());
    assert_eq!(server.records().len(), deployed + 1);

    // A change in the shared folder deploys, built from the live release's files.
    let util = clone.commit_file("libs/common/util.py", "# util v2\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("deployed {}", &util[..7]));
    assert_eq!(
        server.live_file("built.txt"),
        "print('app v1')\n# util v2\n"
    );

    // Asked to, a push deploys what is unchanged.
    let forced = clone.commit_file("docs/more.md", "more\n");
    clone
        .push_args(&["-o", "ats.force", "main"])
        .success()
        .stderr_has("the push asks: force")
        .stderr_has(&format!("deployed {}", &forced[..7]));
    assert_eq!(server.live_file("REVISION"), format!("{forced}\n"));

    // `ats-hook deploy` by hand deploys what it is told.
    server
        .ats(&["deploy"])
        .success()
        .stderr_has(&format!("deployed {}", &forced[..7]));

    // A change in the app: a fast release, only its file written.
    let app = clone.commit_file("backend/app.py", "print('app v2')\n");
    let push = clone.push();
    push.success()
        .stderr_has(&format!("deployed {}", &app[..7]))
        .stderr_has("1 file written, 0 removed");
    assert_eq!(
        server.live_file("built.txt"),
        "print('app v2')\n# util v2\n"
    );
}

/// Gate mode: a push with nothing to deploy is accepted, and the branch moves.
#[test]
fn in_gate_mode_an_unchanged_push_is_accepted() {
    let server = Server::new();
    server.gate().config(CONFIG);
    let clone = monorepo(&server);
    clone.push().success();
    let live = server.live().unwrap();
    let docs = clone.commit_file("docs/index.md", "# docs v2\n");
    clone
        .push()
        .success()
        .stderr_has("unchanged at")
        .stderr_has("nothing to deploy");
    assert_eq!(
        server.tip("refs/heads/main").as_deref(),
        Some(docs.as_str())
    );
    assert_eq!(server.live().unwrap(), live);
    // The next push is based on the branch as it moved.
    let app = clone.commit_file("backend/app.py", "print('app v2')\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("deployed {}", &app[..7]));
}

/// The app's folder gone from the pushed commit: the deploy fails naming it, before anything
/// changed; in gate mode the push is rejected.
#[test]
fn a_commit_without_the_app_folder_fails_naming_it() {
    let server = Server::new();
    server.gate().config(CONFIG);
    let clone = monorepo(&server);
    clone.push().success();
    let live = server.live().unwrap();
    clone.git(&["rm", "-r", "-q", "backend"]).success();
    clone.commit("drop the backend");
    clone
        .push()
        .failure()
        .stderr_has("`backend` (`deploy.path`) is not in commit")
        .stderr_has("deploy FAILED");
    assert_eq!(server.live().unwrap(), live);
    assert_eq!(server.releases().len(), 1);
}

/// The config's folder changed between two pushes: the old release holds another tree, so the
/// next one is checked out whole, never built from it; the whole tree deploys again.
#[test]
fn a_changed_app_folder_is_never_built_from_a_release_of_another() {
    let server = Server::new();
    server
        .config(&CONFIG.replace("paths = ", "keep_releases = 3\npaths = "))
        .advertise_push_options();
    let clone = monorepo(&server);
    clone.push().success();
    clone.commit_file("backend/app.py", "print('app v2')\n");
    clone.push().success();
    server.config("[deploy]\nroot = \"ROOT\"\npath = \"frontend\"\nkeep_releases = 3\n");
    clone.commit_file("frontend/index.html", "<h1>hi</h1>\n");
    clone.push().success();
    clone.commit_file("frontend/index.html", "<h1>hi 2</h1>\n");
    let push = clone.push();
    push.success()
        .stderr_has("and the config now says `frontend`");
    let release = server.root.join("releases").join(server.live().unwrap());
    assert_eq!(
        crate::releases::tracked(&release),
        ["REVISION", "index.html", "package.json"]
    );
    // Back to the whole repository: every push deploys, changed or not.
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n");
    clone.push_args(&["-o", "ats.force", "main"]).success();
    clone
        .git(&["commit", "-q", "--allow-empty", "-m", "empty"])
        .success();
    let push = clone.push();
    push.success().stderr_has("deployed");
    assert!(
        crate::releases::tracked(&server.root.join("releases").join(server.live().unwrap()))
            .contains(&"backend/app.py".to_string())
    );
}

#[test]
fn malformed_app_folders_are_config_errors() {
    let server = Server::new();
    for (toml, error) in [
        (
            "[deploy]\nroot = \"ROOT\"\npaths = [\"libs\"]\n",
            "`deploy.paths` needs `deploy.path`",
        ),
        (
            "[deploy]\nroot = \"ROOT\"\npath = \"backend\"\npaths = [\"backend/x\"]\n",
            "overlaps the app's folder `backend`",
        ),
        (
            "[deploy]\nroot = \"ROOT\"\npath = \"backend\"\npaths = [\"libs\", \"libs/a\"]\n",
            "`deploy.paths` names `libs` and `libs/a`, which overlap",
        ),
        (
            "[deploy]\nroot = \"ROOT\"\npath = \"../up\"\n",
            "without `..`",
        ),
    ] {
        server.config(toml);
        server.ats(&["check"]).failure().stderr_has(error);
    }
}
