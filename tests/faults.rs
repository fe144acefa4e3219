//! Faults and floods that must lose nothing: steps that print without end, one endless line,
//! a history cut mid-line. What a user checks: what the pusher read, what the log kept, the
//! hook's peak memory, the history.

use pretty_assertions::assert_eq;

use crate::support::*;

fn flood_config(run: &str) -> String {
    format!("[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"flood\"\nrun = '''{run}'''\n")
}

/// `git push staging main` under a parent that reports the peak memory of the largest process
/// below it (the hook): the push, and that peak in KiB.
fn push_measuring_memory(clone: &Clone) -> (Run, u64) {
    let mut cmd = command("python3", &clone.dir);
    cmd.current_dir(&clone.dir).args([
        "-c",
        "import resource, subprocess, sys\n\
         done = subprocess.run(sys.argv[1:])\n\
         print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
         sys.exit(done.returncode)",
        "git",
        "push",
        "staging",
        "main",
    ]);
    let push = run(&mut cmd, "git push staging main (peak memory measured)");
    let peak = push
        .stdout()
        .trim()
        .parse()
        .expect("the peak memory in KiB");
    (push, peak)
}

/// Whether the pusher read `line` (without the padding of step names and git's own).
fn pusher_read(push: &Run, line: &str) -> bool {
    push.remote_lines().iter().any(|l| l.trim_start() == line)
}

/// The log of the last deploy.
fn last_log(server: &Server) -> String {
    let id = server.last_record()["id"].as_str().unwrap().to_string();
    std::fs::read_to_string(server.root.join(".ats-hook/logs").join(format!("{id}.log"))).unwrap()
}

#[test]
fn a_flooding_step_keeps_its_error_for_the_pusher_and_the_log() {
    let server = Server::new();
    server.config(&flood_config(
        "seq 1 1000000; echo \"ERROR: the real cause of the failure\" >&2; exit 1",
    ));
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    let push = clone.push();
    let id = server.last_record()["id"].as_str().unwrap().to_string();
    push.success()
        .stderr_has(&format!(
            "ats-hook: … 997901 lines of `flood` not shown here; the whole output: `ats-hook log {id}`"
        ))
        .stderr_has("deploy FAILED at step flood (exit 1)");
    for (line, read) in [
        ("flood | 2000", true),
        ("flood | 2001", false),
        ("flood | 999900", false),
        ("flood | 999901", false),
        ("flood | 999902", true),
        ("flood | ERROR: the real cause of the failure", true),
    ] {
        assert_eq!(pusher_read(&push, line), read, "{line}");
    }
    // The pusher read about 2,100 lines of it; the log has every one, the error last.
    assert!(
        push.remote_lines().len() < 2200,
        "{}",
        push.remote_lines().len()
    );
    let log = last_log(&server);
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("flood | "))
        .collect();
    assert_eq!(lines.len(), 1_000_001);
    assert_eq!(lines[500_000], "flood | 500001");
    assert_eq!(
        lines[1_000_000],
        "flood | ERROR: the real cause of the failure"
    );
    server
        .ats(&["log", &id])
        .success()
        .stdout_has("flood | ERROR: the real cause of the failure");
}

#[test]
fn memory_stays_bounded_whatever_a_step_prints() {
    let server = Server::new();
    // 300 MB in lines of 100 bytes, more than the log keeps.
    server.config(&flood_config(
        "head -c 300000000 /dev/zero | tr '\\0' x | fold -w 99; echo; echo done",
    ));
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    let (push, peak_kib) = push_measuring_memory(&clone);
    assert!(pusher_read(&push, "flood | done"));
    push.success()
        .stderr_has("lines of `flood` not shown here")
        .stderr_has("of `flood` (")
        .stderr_has("not kept in the log: it keeps 50.0 MiB of output (`deploy.log_limit`)")
        .stderr_has("ats-hook: deployed ");
    assert!(
        peak_kib <= 64 * 1024,
        "the hook peaked at {} MiB printing 300 MB",
        peak_kib / 1024
    );
    let log = last_log(&server);
    assert!(log.len() <= 51 << 20, "the log holds {} bytes", log.len());
    assert!(log.contains("not kept in the log"));

    // One 50 MB line without a newline: handed over in pieces, never buffered whole.
    server.config(&flood_config(
        "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo 'ERROR: after the long line' >&2; exit 1",
    ));
    clone.commit_file("app.py", "2\n");
    let (push, peak_kib) = push_measuring_memory(&clone);
    assert!(pusher_read(&push, "flood | ERROR: after the long line"));
    push.success()
        .stderr_has("deploy FAILED at step flood (exit 1)");
    assert!(
        peak_kib <= 64 * 1024,
        "the hook peaked at {} MiB on one 50 MB line",
        peak_kib / 1024
    );
    assert!(
        push.stderr().len() < 1 << 20,
        "the pusher got {} bytes",
        push.stderr().len()
    );
}

#[test]
fn a_torn_last_line_of_the_history_loses_no_later_deploy() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.commit_file("app.py", "1\n");
    clone.push().success();
    clone.commit_file("app.py", "2\n");
    clone.push().success();
    // A power loss during the last append: the record is cut mid-line.
    let history = server.root.join(".ats-hook/deploys.jsonl");
    let text = std::fs::read(&history).unwrap();
    let whole = text.iter().filter(|&&b| b == b'\n').count();
    std::fs::write(&history, &text[..text.len() - 40]).unwrap();

    let v3 = clone.commit_file("app.py", "3\n");
    let push = clone.push();
    push.success()
        .stderr_has(&format!(
            "skipped 1 damaged line that did not parse (line {whole})"
        ))
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The torn line stands alone; v3's records of its switch and of its end follow it.
    assert_eq!(lines.len(), whole + 2, "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(lines[whole - 1]).is_err());
    let last: serde_json::Value = serde_json::from_str(lines[whole + 1]).unwrap();
    assert_eq!(last["commit"], v3.as_str());
    assert_eq!(last["state"], "succeeded");

    // What people read: the live release is known, and the last deploy is the new one.
    let releases: serde_json::Value =
        serde_json::from_str(&server.ats(&["releases", "--json"]).stdout()).unwrap();
    let live = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["live"] == true)
        .unwrap();
    assert_eq!(live["state"], "succeeded");
    assert_eq!(live["commit"], v3.as_str());
    server
        .ats(&["status"])
        .success()
        .stdout_has(&format!(
            "last deploy: {} succeeded",
            last["id"].as_str().unwrap()
        ))
        .stderr_has("skipped 1 damaged line");
    // And the next deploy appends cleanly.
    clone.commit_file("app.py", "4\n");
    clone.push().success();
    let text = std::fs::read_to_string(&history).unwrap();
    assert_eq!(text.lines().count(), whole + 4);
    assert!(text.ends_with("}\n"));
}

#[test]
fn the_release_is_on_disk_before_current_switches_and_the_history_before_the_summary() {
    // A power loss cannot be staged here; the order of the system calls that guard against it
    // can be read with strace: the release's filesystem is synced (syncfs) before `current` is
    // renamed onto it, and the history's append is synced (fdatasync) before the summary line
    // is written for the pusher.
    use std::os::unix::fs::PermissionsExt;
    let server = Server::new();
    server.config(
        "[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"build\"\nrun = \"echo built > built.txt\"\n",
    );
    let trace = server.path().join("trace");
    let hook = server.bare.join("hooks/post-receive");
    std::fs::remove_file(&hook).unwrap();
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nexec strace -f -qq -s 200 -o {} -e trace=syncfs,rename,renameat,renameat2,fdatasync,write {BIN} post-receive\n",
            trace.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let clone = server.clone("work");
    let commit = clone.commit_file("app.py", "1\n");
    clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &commit[..7]));
    assert_eq!(server.live_file("built.txt"), "built\n");
    let text =
        std::fs::read_to_string(&trace).expect("strace wrote no trace (tests/run installs strace)");
    let lines: Vec<&str> = text.lines().collect();
    let first = |what: &str, found: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| found(l))
            .unwrap_or_else(|| panic!("no {what} in the trace:\n{text}"))
    };
    let switch = first("rename onto `current`", &|l| {
        l.contains("rename") && l.contains("/.current.") && l.contains("/current\"")
    });
    let release_sync = lines[..switch]
        .iter()
        .rposition(|l| l.contains("syncfs(") && l.ends_with("= 0"));
    assert!(
        release_sync.is_some(),
        "no syncfs before the switch:\n{text}"
    );
    let summary = first("summary line", &|l| {
        l.contains("write(2, \"ats-hook: deployed ")
    });
    let history_sync = lines[switch..summary]
        .iter()
        .any(|l| l.contains("fdatasync(") && l.ends_with("= 0"));
    assert!(
        history_sync,
        "no fdatasync between the switch and the summary:\n{text}"
    );
}
