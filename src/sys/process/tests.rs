use super::*;

#[test]
fn streams_lines_and_reports_exit() {
    let mut seen = Vec::new();
    let finished = Cmd::shell("echo one; echo two >&2; exit 3")
        .stream(&mut |line| seen.push(line.to_string()))
        .unwrap();
    assert_eq!(seen, ["one", "two"]);
    assert_eq!(finished.exit, Exit::Code(3));
}

#[test]
fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let script = format!("sleep 60 & echo $! > {}; sleep 60", pidfile.display());
    let finished = Cmd::shell(&script)
        .timeout(Duration::from_millis(300))
        .stream(&mut |_| {})
        .unwrap();
    assert!(matches!(finished.exit, Exit::TimedOut(_)));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background sleep is gone (or a zombie waiting for its reaper) once the SIGKILL,
    // which the kernel delivers on its own time, has landed.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.split(' ').nth(2).is_some_and(|s| s == "Z"))
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(), "background child {pid} survived the timeout");
}

#[test]
fn output_printed_before_the_exit_is_never_dropped_by_a_slow_reader() {
    let mut lines = 0usize;
    let mut last = String::new();
    let finished = Cmd::shell("seq 1 200000; echo 'ERROR: the real cause' >&2; exit 1")
        .stream(&mut |line| {
            lines += 1;
            // A reader slower than the child, as a pusher over SSH is.
            if lines % 20_000 == 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            last = line.to_string();
        })
        .unwrap();
    assert_eq!(finished.exit, Exit::Code(1));
    assert_eq!(lines, 200_001);
    assert_eq!(last, "ERROR: the real cause");
    assert_eq!(finished.tail.last().unwrap(), "ERROR: the real cause");
}

#[test]
fn a_long_line_comes_in_pieces() {
    let mut pieces = Vec::new();
    Cmd::shell("head -c 40000 /dev/zero | tr '\\0' x; echo; echo after")
        .stream(&mut |line| pieces.push(line.to_string()))
        .unwrap();
    assert_eq!(
        pieces.len(),
        4,
        "{:?}",
        pieces.iter().map(String::len).collect::<Vec<_>>()
    );
    assert!(pieces[0].ends_with(" …") && pieces[0].len() == MAX_LINE + " …".len());
    assert!(pieces[1].ends_with(" …"));
    assert_eq!(pieces[2].len(), 40_000 - 2 * MAX_LINE);
    assert_eq!(pieces[3], "after");
}

#[test]
fn git_variables_are_not_inherited() {
    std::env::set_var("GIT_DIR_FOR_TEST_ONLY", "x");
    let out = Cmd::shell("env").read().unwrap();
    assert!(!out.contains("GIT_DIR_FOR_TEST_ONLY"));
}

#[test]
fn signal_exit_is_128_plus_n() {
    let finished = Cmd::shell("kill -9 $$").stream(&mut |_| {}).unwrap();
    assert_eq!(finished.exit, Exit::Signal(9));
    assert_eq!(finished.exit.shell_code(), Some(137));
}
