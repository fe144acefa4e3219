//! What is kept is never reused wrongly: a release or build a running process uses, an
//! untracked entry where a release is stamped, a release whose index cannot be read.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::Path;
use std::time::Duration;

use super::*;

/// A process working in an old release (an app server started there, a shell) keeps it: it is
/// neither renamed into a new release nor pruned while the process runs, and the pusher reads
/// why. So is a stored build a process has a file open in. Once the process is gone, both go.
#[test]
fn a_release_or_build_a_running_process_uses_is_neither_reused_nor_pruned() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 2\n\
         [[step]]\nname = \"build\"\nrun = \"mkdir out && cat dep > out/built\"\n\
         outputs = [\"out\"]\ninputs = [\"dep\"]\n",
    );
    let clone = server.clone("work");
    clone.write("dep", "1\n");
    let v1 = clone.commit_file("a", "0");
    clone.push().success();
    let first = server.live().unwrap();
    clone.write("dep", "2\n");
    clone.commit_file("a", "1");
    clone.push().success();
    // The build of the second release, which pruning will remove: a reader holds it open.
    let read_build = server.build_of(&server.live().unwrap(), "build", "out");
    let dir = server.root.join("releases").join(&first);
    let worker = ChildGuard(
        std::process::Command::new("sleep")
            .arg("120")
            .current_dir(&dir)
            .spawn()
            .unwrap(),
    );
    let reader = ChildGuard(
        std::process::Command::new("tail")
            .arg("-f")
            .arg(
                server
                    .root
                    .join("outputs/build")
                    .join(&read_build)
                    .join("out/built"),
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let worker_pid = worker.0.id();
    let reader_pid = reader.0.id();
    wait_for("tail to open the file", Duration::from_secs(5), || {
        std::fs::read_dir(format!("/proc/{reader_pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .any(|path| path.ends_with("out/built"))
    });

    let mut said = String::new();
    for n in 2..=5 {
        clone.write("dep", &format!("{}\n", n + 1));
        clone.commit_file("a", &n.to_string());
        let push = clone.push();
        push.success();
        said.push_str(&push.stderr());
        // Untouched: the same folder, its commit's files.
        assert_eq!(
            std::fs::read_to_string(dir.join("REVISION")).unwrap(),
            format!("{v1}\n")
        );
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "0");
    }
    assert!(
        said.contains(&format!(
            "kept old release {first}: in use by pid {worker_pid} (sleep, working directory)"
        )) || said.contains(&format!(
            "not reusing release {first}: in use by pid {worker_pid} (sleep, working directory)"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "kept stored build build/{read_build}: in use by pid {reader_pid} (tail, open file)"
        )),
        "{said}"
    );
    assert!(server.builds("build").contains(&read_build));
    // The kept two, and the one in use.
    assert_eq!(
        std::fs::read_dir(server.root.join("releases"))
            .unwrap()
            .count(),
        3
    );

    drop(worker);
    drop(reader);
    clone.commit_file("a", "6");
    clone.push().success();
    assert!(!dir.exists(), "{} outlived its process", dir.display());
    assert!(!server.builds("build").contains(&read_build));
    assert_eq!(
        std::fs::read_dir(server.root.join("releases"))
            .unwrap()
            .count(),
        2
    );
}

/// Sets the time of every folder under `dir` a minute back, as if the tree had settled. A
/// folder that goes meanwhile (the spare, prepared in the background) is passed over.
fn age_folders(dir: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        if let Ok(file) = std::fs::File::open(&folder) {
            file.set_modified(old).unwrap();
        }
    }
}

/// A release built from an old one lists only the folders whose time moved since it was
/// stamped; whatever was added in them (a file, a nested folder, a folder the new commit
/// drops) still goes, and the folders nobody touched are trusted.
#[test]
fn untracked_entries_go_even_where_a_release_is_stamped() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    for path in ["a/b/c/f1", "a/b/g", "x/y/z", "gone/inner/h", "quiet/q"] {
        clone.write(path, path);
    }
    let releases_dir = server.root.join("releases");
    let mut pushes = 0;
    let mut push = |clone: &Clone, text: &str| {
        clone.commit_file("n", text);
        if releases_dir.exists() {
            age_folders(&releases_dir);
        }
        clone.push().success();
        pushes += 1;
    };
    // Three releases, then three built from old ones: each stamped with settled folders.
    for n in 0..6 {
        push(&clone, &n.to_string());
    }
    let live = server.live().unwrap();
    let records = server.records();
    let expendable: Vec<String> = server
        .releases()
        .into_iter()
        .filter(|id| *id != live && records.iter().rev().nth(1).unwrap()["release"] != id.as_str())
        .collect();
    assert_eq!(expendable.len(), 1, "{:?}", server.releases());
    let next = releases_dir.join(&expendable[0]);
    let stamps = std::fs::read_to_string(
        server
            .root
            .join(".ats-hook/index")
            .join(format!("{}.folders", expendable[0])),
    )
    .unwrap();
    assert!(stamps.lines().any(|l| l.ends_with(" a/b/c")), "{stamps}");
    assert!(stamps.lines().any(|l| l.ends_with(" quiet")), "{stamps}");

    // Someone writes into the release the next push builds from.
    std::fs::write(next.join("a/b/c/junk.txt"), "junk").unwrap();
    std::fs::create_dir_all(next.join("a/b/newdir/deep")).unwrap();
    std::fs::write(next.join("a/b/newdir/deep/j"), "junk").unwrap();
    std::fs::write(next.join("gone/inner/junk2"), "junk").unwrap();
    std::fs::write(next.join("x/y/extra"), "junk").unwrap();
    // The next commit drops `gone/`.
    std::fs::remove_dir_all(clone.dir.join("gone")).unwrap();
    clone.commit_file("n", "last");
    clone.push().success().stderr_has("untracked removed");
    let record = server.last_record();
    assert_eq!(record["built_from"], expendable[0].as_str());
    let built = releases_dir.join(record["release"].as_str().unwrap());
    let repo = git2::Repository::open_bare(&server.bare).unwrap();
    assert_release_is(&repo, &built, record["commit"].as_str().unwrap(), &[]);
    assert!(!built.join("gone").exists());
}

/// An old release whose index cannot be trusted (git's own format, as earlier versions of
/// ats-hook wrote it, or a damaged file) is not built from: the push checks its tree out whole,
/// says why, and goes live as usual.
#[test]
fn a_release_with_an_unreadable_index_is_not_built_from() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    clone.write("lib/util.py", "x = 1\n");
    for n in 0..3 {
        clone.commit_file("app.py", &format!("{n}\n"));
        clone.push().success();
    }
    // Every release's index damaged (a byte flipped in the middle), then in git's own format.
    let indexes = |server: &Server| -> Vec<std::path::PathBuf> {
        server
            .releases()
            .iter()
            .map(|id| server.root.join(format!(".ats-hook/index/{id}")))
            .collect()
    };
    for index in indexes(&server) {
        let mut bytes = std::fs::read(&index).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&index, bytes).unwrap();
    }
    clone.commit_file("app.py", "3\n");
    clone
        .push()
        .success()
        .stderr_has("the file is damaged; checking the tree out whole")
        .stderr_has("checked out 2 files");
    assert_eq!(server.live_file("app.py"), "3\n");
    assert_eq!(server.live_file("lib/util.py"), "x = 1\n");
    assert!(server.last_record()["built_from"].is_null());

    for index in indexes(&server) {
        std::fs::write(&index, b"DIRC\x00\x00\x00\x02\x00\x00\x00\x00").unwrap();
    }
    clone.commit_file("app.py", "4\n");
    clone
        .push()
        .success()
        .stderr_has(
            "is unreadable: not an index of this version of ats-hook; checking the tree out whole",
        )
        .stderr_has("checked out 2 files");
    assert_eq!(server.live_file("app.py"), "4\n");

    // Once pruning has taken those, the releases made since are built from again.
    let mut built_from = None;
    for n in 5..9 {
        clone.commit_file("app.py", &format!("{n}\n"));
        clone.push().success();
        assert_eq!(server.live_file("app.py"), format!("{n}\n"));
        built_from = server.last_record()["built_from"]
            .as_str()
            .map(String::from);
        if built_from.is_some() {
            break;
        }
    }
    assert!(
        built_from.is_some(),
        "never built from an old release again"
    );
}
