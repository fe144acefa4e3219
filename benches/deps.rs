//! What a release's dependencies cost, next to the usual ways, measured in one run.
//!
//! Run with `cargo bench --bench deps` (add `-- --quick` for a shorter run; `tests/run` must
//! have downloaded the sample app's wheels into `target/test-wheels`). On the Flask sample app
//! of the tests, with its real requirements installed by real pip from local wheels, it pushes
//! through ats-hook as a real post-receive hook and times, in the same run:
//!
//! - a push of a code change with no install step at all;
//! - the same push with the virtualenv as a stored output (`outputs = [".venv"]`), reused;
//! - the same push with a fresh virtualenv built in every release (the old tagged example);
//! - a push that changes the lockfile, so the stored output is built, against the same
//!   `venv` + `pip install` run by hand in a fresh folder;
//!
//! and the disk each way takes for the same releases. It prints medians and ratios against the
//! targets. Everything happens under one temporary folder, removed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ats_hook::outputs::disk_usage_of;

mod support;
use support::*;

#[path = "../tests/support/files.rs"]
mod files;
use files::copy_dir;

const INSTALL: &str = "/usr/bin/python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt";

/// One bare repository with ats-hook as its hook, and its deploy root.
struct Target {
    bare: PathBuf,
    root: PathBuf,
}

impl Target {
    fn new(base: &Path, name: &str, steps: &str, wheels: &Path) -> Target {
        let bare = base.join(format!("{name}.git"));
        let root = base.join(name);
        hooked_repository(
            base,
            &bare,
            &format!(
                "[deploy]\nroot = \"{}\"\nkeep_releases = 5\n\
                 [env]\nPIP_NO_INDEX = \"1\"\nPIP_FIND_LINKS = \"{}\"\n{steps}\
                 [[step]]\nname = \"build\"\nrun = \"make build\"\n",
                root.display(),
                wheels.display()
            ),
        );
        Target { bare, root }
    }

    /// Pushes `main` from `work`: the wall time, and what the install step took by the hook's
    /// own record.
    fn push(&self, work: &Path) -> (Duration, Option<Duration>) {
        let took = time(
            hermetic(Command::new("git"))
                .args(["push", "-q", "--force"])
                .arg(&self.bare)
                .arg("main")
                .current_dir(work),
        );
        let record = last_record(&self.root);
        assert_eq!(record["state"], "succeeded", "{record}");
        let install = record["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "install")
            .map(|s| Duration::from_millis(s["duration_ms"].as_u64().unwrap()));
        (took, install)
    }

    /// How long the step itself ran for the build the last deploy stored (without the key, the
    /// sync that makes the build durable, and the links), as the store records it.
    fn last_build_run(&self) -> Duration {
        let record = last_record(&self.root);
        let key = record["steps"][0]["output"]["key"].as_str().unwrap();
        let path = self.root.join(format!("outputs/install/{key}.json"));
        let build: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        Duration::from_millis(build["duration_ms"].as_u64().unwrap())
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (series, fresh_series, builds) = if quick { (5, 2, 2) } else { (11, 4, 5) };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let wheels = manifest.join("target/test-wheels");
    assert!(
        std::fs::read_dir(&wheels).is_ok_and(|mut e| e.next().is_some()),
        "{} is empty: run tests/run once, which downloads the sample app's wheels",
        wheels.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix("ats-hook-bench-deps-")
        .tempdir()
        .unwrap();
    let base = tmp.path();
    let work = base.join("work");
    copy_dir(&manifest.join("tests/fixtures/flask-app"), &work);
    let requirements = std::fs::read_to_string(work.join("requirements.txt")).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "the sample app"]);

    let none = Target::new(base, "none", "", &wheels);
    let stored = Target::new(
        base,
        "stored",
        &format!(
            "[[step]]\nname = \"install\"\nrun = \"{INSTALL}\"\ninputs = [\"requirements.txt\"]\n\
             outputs = [\".venv\"]\nkey = \"/usr/bin/python3 --version\"\n"
        ),
        &wheels,
    );
    let fresh = Target::new(
        base,
        "fresh",
        &format!("[[step]]\nname = \"install\"\nrun = \"{INSTALL}\"\n"),
        &wheels,
    );
    for target in [&none, &stored, &fresh] {
        target.push(&work);
    }

    // Code changes, the lockfile unchanged: the three ways in turns, on the same commits.
    let (mut none_push, mut stored_push, mut stored_install) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fresh_push, mut fresh_install) = (Vec::new(), Vec::new());
    for n in 0..series {
        std::fs::write(work.join("VERSION"), format!("{n}\n")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", &format!("change {n}")]);
        none_push.push(none.push(&work).0);
        let (took, install) = stored.push(&work);
        stored_push.push(took);
        stored_install.push(install.unwrap());
        if n < fresh_series {
            let (took, install) = fresh.push(&work);
            fresh_push.push(took);
            fresh_install.push(install.unwrap());
        }
    }
    let releases_on_disk = |root: &Path| std::fs::read_dir(root.join("releases")).unwrap().count();
    let stored_disk =
        disk_usage_of(&[&stored.root.join("releases"), &stored.root.join("outputs")]).unwrap();
    let stored_releases = releases_on_disk(&stored.root);
    let stored_builds = std::fs::read_dir(stored.root.join("outputs/install"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    let fresh_disk = disk_usage_of(&[&fresh.root.join("releases")]).unwrap();
    let fresh_releases = releases_on_disk(&fresh.root);

    // Changed lockfiles: each push builds and stores a new output; the same build by hand in
    // a fresh folder, in turns.
    let (mut changed_push, mut changed_install, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let mut changed_run = Vec::new();
    for n in 0..builds {
        std::fs::write(
            work.join("requirements.txt"),
            format!("{requirements}# lockfile change {n}\n"),
        )
        .unwrap();
        git(&work, &["commit", "-q", "-am", &format!("lockfile {n}")]);
        let (took, install) = stored.push(&work);
        changed_push.push(took);
        changed_install.push(install.unwrap());
        changed_run.push(stored.last_build_run());
        let by_hand = base.join(format!("by-hand-{n}"));
        std::fs::create_dir(&by_hand).unwrap();
        std::fs::copy(
            work.join("requirements.txt"),
            by_hand.join("requirements.txt"),
        )
        .unwrap();
        plain.push(time(
            Command::new("sh")
                .arg("-c")
                .arg(INSTALL)
                .current_dir(&by_hand)
                .env("PIP_NO_INDEX", "1")
                .env("PIP_FIND_LINKS", &wheels),
        ));
    }

    let (none_m, stored_m, stored_i) = (
        median(none_push),
        median(stored_push),
        median(stored_install),
    );
    let (fresh_m, fresh_i) = (median(fresh_push), median(fresh_install));
    let (changed_m, changed_i, plain_m) =
        (median(changed_push), median(changed_install), median(plain));
    let changed_r = median(changed_run);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);

    println!();
    println!(
        "ats-hook dependency benchmark: the Flask sample app ({} requirements, real pip, local wheels);",
        requirements.lines().count()
    );
    println!(
        "medians of {series} code changes ({fresh_series} for the fresh virtualenv) and {builds} lockfile changes; one run, one machine"
    );
    println!();
    println!("| way | push-to-live | install stage |");
    println!("| --- | --- | --- |");
    println!("| no install step | {} | - |", ms(none_m));
    println!(
        "| ats-hook, stored virtualenv reused (lockfile unchanged) | {} | {} |",
        ms(stored_m),
        ms(stored_i)
    );
    println!(
        "| a fresh virtualenv in every release | {} | {} |",
        ms(fresh_m),
        ms(fresh_i)
    );
    println!(
        "| ats-hook, lockfile changed (built and stored) | {} | {} ({} the build itself) |",
        ms(changed_m),
        ms(changed_i),
        ms(changed_r)
    );
    println!(
        "| `venv` + `pip install` by hand in a fresh folder | - | {} |",
        ms(plain_m)
    );
    println!();
    println!("| target | measured | |");
    println!("| --- | --- | --- |");
    println!(
        "| reused install stage < 50 ms | {} | {} |",
        ms(stored_i),
        verdict(stored_i < Duration::from_millis(50))
    );
    let r1 = ratio(stored_m, none_m);
    println!(
        "| push-to-live ≤ 1.2× the push with no install step | {r1:.2}× | {} |",
        verdict(r1 <= 1.2)
    );
    let r2 = ratio(fresh_m, stored_m);
    println!(
        "| ≥ 50× faster than a fresh virtualenv per release | {r2:.0}× push-to-live ({:.0}× install stage) | {} |",
        ratio(fresh_i, stored_i),
        verdict(r2 >= 50.0)
    );
    let r3 = ratio(changed_r, plain_m);
    println!(
        "| changed lockfile ≤ 1.1× the plain build | {r3:.2}× the build itself ({:.2}× with the key, the sync to disk and the links) | {} |",
        ratio(changed_i, plain_m),
        verdict(r3 <= 1.1)
    );
    println!(
        "| disk: per distinct key, not per release | {} for {stored_releases} releases on {stored_builds} build(s); a fresh virtualenv each: {} for {fresh_releases} | {:.1}× less |",
        mb(stored_disk),
        mb(fresh_disk),
        fresh_disk as f64 / stored_disk.max(1) as f64
    );
}
