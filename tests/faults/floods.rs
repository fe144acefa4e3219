//! Steps that print without end, or one endless line: the pusher still reads the error, the
//! log keeps what it may, and the hook's memory stays bounded.

use crate::support::*;
use pretty_assertions::assert_eq;

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
    println!(
        "floods: peak memory {} MiB while a step printed 300 MB",
        peak_kib / 1024
    );
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
    println!(
        "floods: peak memory {} MiB on one 50 MB line",
        peak_kib / 1024
    );
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
