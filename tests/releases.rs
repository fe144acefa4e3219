//! Incremental releases: a new release built from an old one must hold exactly its commit's
//! tree, whatever the history did (adds, deletes, renames, modes, symlinks, files turned into
//! folders and back), and the live release and the rollback target are never touched.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::rng::Rng;
use crate::support::*;

/// Tracked paths of the work tree (files and symlinks), relative.
fn tracked(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".git" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// One random change to the work tree.
fn mutate(rng: &mut Rng, dir: &Path, n: usize) {
    let files = tracked(dir);
    let folders = ["", "a/", "a/b/", "c/", "c/d/e/"];
    let pick = |rng: &mut Rng| files[rng.below(files.len())].clone();
    match rng.below(8) {
        // Add a file.
        0 | 1 => {
            let path = dir.join(format!("{}f{n}.txt", folders[rng.below(folders.len())]));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("file {n}\n").repeat(rng.below(50) + 1)).unwrap();
        }
        // Change a file's content.
        2 if !files.is_empty() => {
            let path = dir.join(pick(rng));
            if !path.is_symlink() {
                std::fs::write(path, format!("changed {n}\n")).unwrap();
            }
        }
        // Delete one.
        3 if files.len() > 3 => std::fs::remove_file(dir.join(pick(rng))).unwrap(),
        // Rename one.
        4 if !files.is_empty() => {
            let from = dir.join(pick(rng));
            let to = dir.join(format!("{}moved{n}", folders[rng.below(folders.len())]));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::rename(from, to).unwrap();
        }
        // Flip the executable bit.
        5 if !files.is_empty() => {
            let path = dir.join(pick(rng));
            if !path.is_symlink() {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode ^ 0o111))
                    .unwrap();
            }
        }
        // A symlink, to a file or nowhere.
        6 => {
            let target = if files.is_empty() {
                "nowhere".to_string()
            } else {
                pick(rng)
            };
            let link = dir.join(format!("link{n}"));
            std::os::unix::fs::symlink(target, link).unwrap();
        }
        // A file replaced by a folder of that name, or a folder by a file.
        _ => {
            let file = dir.join("shape");
            if file.is_dir() {
                std::fs::remove_dir_all(&file).unwrap();
                std::fs::write(&file, format!("a file again {n}\n")).unwrap();
            } else {
                let _ = std::fs::remove_file(&file);
                std::fs::create_dir_all(file.join("inner")).unwrap();
                std::fs::write(file.join("inner/x"), format!("now a folder {n}\n")).unwrap();
            }
        }
    }
}

/// Asserts a release holds exactly the commit's tree: same paths, bytes, modes and links, and
/// nothing else but the shared links.
#[track_caller]
fn assert_release_is(repo: &git2::Repository, release: &Path, commit: &str, shared: &[&str]) {
    let tree = repo
        .find_commit(git2::Oid::from_str(commit).unwrap())
        .unwrap()
        .tree()
        .unwrap();
    let mut expected: BTreeMap<String, (i32, Vec<u8>)> = BTreeMap::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |prefix, entry| {
        let path = format!("{prefix}{}", entry.name().unwrap());
        let linked = shared
            .iter()
            .any(|s| path == *s || path.starts_with(&format!("{s}/")));
        if entry.kind() == Some(git2::ObjectType::Blob) && !linked {
            let blob = repo.find_blob(entry.id()).unwrap();
            expected.insert(path, (entry.filemode(), blob.content().to_vec()));
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    // Unless the commit tracks one, ats-hook writes the commit into REVISION.
    expected
        .entry("REVISION".to_string())
        .or_insert_with(|| (0o100644, format!("{commit}\n").into_bytes()));
    let mut actual: BTreeMap<String, (i32, Vec<u8>)> = BTreeMap::new();
    for rel in tracked(release) {
        if shared.contains(&rel.as_str()) {
            continue;
        }
        let path = release.join(&rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let entry = if meta.file_type().is_symlink() {
            (
                0o120000,
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            let mode = if meta.mode() & 0o100 != 0 {
                0o100755
            } else {
                0o100644
            };
            (mode, std::fs::read(&path).unwrap())
        };
        actual.insert(rel, entry);
    }
    let show = |m: &BTreeMap<String, (i32, Vec<u8>)>| -> Vec<String> {
        m.iter()
            .map(|(k, (mode, bytes))| {
                format!("{k} {mode:o} {}", String::from_utf8_lossy(bytes).len())
            })
            .collect()
    };
    assert_eq!(
        show(&actual),
        show(&expected),
        "release {} differs from {commit}",
        release.display()
    );
    assert!(
        actual == expected,
        "release {} has the right paths but other bytes than {commit}",
        release.display()
    );
}

/// Identity of every file of a folder: inode, size, mtime, ctime.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u64, i64, i64, i64)> {
    tracked(dir)
        .into_iter()
        .map(|rel| {
            let meta = std::fs::symlink_metadata(dir.join(&rel)).unwrap();
            (
                rel,
                (
                    meta.ino(),
                    meta.size(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime_nsec(),
                ),
            )
        })
        .collect()
}

#[test]
fn every_release_equals_its_commit_through_a_random_history() {
    let seed: u64 = std::env::var("ATS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_ba5e);
    println!("seed {seed} (ATS_TEST_SEED replays it)");
    let mut rng = Rng(seed);
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n[shared]\npaths = [\"log\"]\n\
         [[step]]\nname = \"build\"\nrun = \"mkdir -p build && date +%s%N > build/out.txt\"\n",
    );
    let clone = server.clone("work");
    clone.write("README", "start\n");
    clone.write("log/.gitkeep", "");
    clone.commit("start");
    clone.push().success();
    let repo = git2::Repository::open_bare(&server.bare).unwrap();

    let mut recycled = 0;
    for n in 0..30 {
        for op in 0..rng.below(5) + 1 {
            mutate(&mut rng, &clone.dir, n * 10 + op);
        }
        clone.commit(&format!("change {n}"));
        // What is live, and where a rollback would go, must come through this deploy untouched.
        let records = server.records();
        let live = server.live().unwrap();
        let rollback = records
            .iter()
            .rev()
            .map(|r| r["release"].as_str().unwrap().to_string())
            .find(|id| *id != live && server.releases().contains(id));
        let before: Vec<(PathBuf, _)> = [Some(live.clone()), rollback]
            .into_iter()
            .flatten()
            .map(|id| {
                let dir = server.root.join("releases").join(id);
                let snap = snapshot(&dir);
                (dir, snap)
            })
            .collect();

        clone.push().success().stderr_has("ats-hook: deployed");

        for (dir, snap) in &before {
            assert_eq!(
                &snapshot(dir),
                snap,
                "{} was touched by deploy {n}",
                dir.display()
            );
        }
        let record = server.last_record();
        if record["built_from"].is_string() {
            recycled += 1;
        }
        for id in server.releases() {
            let made = server
                .records()
                .into_iter()
                .rev()
                .find(|r| r["release"] == id.as_str() && r["action"] == "deploy")
                .unwrap();
            let dir = server.root.join("releases").join(&id);
            assert_release_is(
                &repo,
                &dir,
                made["commit"].as_str().unwrap(),
                &["log", "build/out.txt"],
            );
            assert!(
                std::fs::read_link(dir.join("log")).is_ok(),
                "{id} lost its shared link"
            );
        }
    }
    assert!(
        recycled >= 25,
        "only {recycled} of 30 deploys were built from an old release"
    );
}

#[test]
fn a_reused_release_starts_from_its_commit_alone() {
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n\
         [[step]]\nname = \"build\"\nrun = \"test -e build/first || { mkdir -p build; echo $ATS_COMMIT > build/first; }\"\n",
    );
    let clone = server.clone("work");
    let first = clone.commit_file("a", "0");
    clone.push().success();
    for n in 1..4 {
        clone.commit_file("a", &n.to_string());
        clone.push().success();
    }
    let last = server.last_record();
    assert!(last["built_from"].is_string(), "{last}");
    assert_ne!(server.live_file("build/first").trim(), first);
    assert_eq!(server.live_file("build/first").trim(), clone.head());
}

#[test]
fn a_tracked_file_changed_on_disk_is_rewritten_when_its_release_is_reused() {
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\nkeep_releases = 3\n");
    let clone = server.clone("work");
    clone.write("config.py", "DEBUG = False\n");
    clone.commit_file("app.py", "0\n");
    clone.push().success();
    let oldest = server.live().unwrap();
    // Someone edits a file of an old release by hand.
    std::fs::write(
        server.root.join("releases").join(&oldest).join("config.py"),
        "DEBUG = True\n",
    )
    .unwrap();
    for n in 1..4 {
        clone.commit_file("app.py", &format!("{n}\n"));
        let push = clone.push();
        push.success();
        if n == 3 {
            push.stderr_has(&format!("built from old release {oldest}"))
                .stderr_has("1 changed on disk and rewritten");
        }
    }
    assert_eq!(server.live_file("config.py"), "DEBUG = False\n");
}

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

/// Sets the time of every folder under `dir` a minute back, as if the tree had settled.
fn age_folders(dir: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
        std::fs::File::open(&folder)
            .unwrap()
            .set_modified(old)
            .unwrap();
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
