//! Text from a commit or a pusher reaches screens with its control characters escaped: a
//! subject cannot retitle the admin's terminal or hide a line, nor can a push option.

use crate::support::*;

const EVIL: &str = "Fix\x1b]0;owned\x07 it\x1b[2K\rall good";

#[track_caller]
fn no_raw_escapes(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b') && !text.contains('\x07') && !text.contains('\r'),
        "{what} printed raw control characters: {text:?}"
    );
}

#[test]
fn a_commit_subject_and_a_push_option_are_printed_escaped() {
    let server = Server::new();
    let clone = server.clone("work");
    clone.write("a", "1\n");
    clone.git(&["add", "-A"]).success();
    clone.git(&["commit", "--quiet", "-m", EVIL]).success();
    let push = clone.push();
    push.success();
    no_raw_escapes("the push", &push.stderr());
    for command in ["status", "log", "releases"] {
        let run = server.ats(&[command]);
        run.success();
        no_raw_escapes(command, &run.stdout());
        run.stdout_has("Fix\\u{1b}]0;owned");
    }
    // The history keeps the subject as it is: only screens get it escaped.
    assert_eq!(server.last_record()["subject"], EVIL);

    cmd_option(&server, &clone);
}

fn cmd_option(server: &Server, clone: &Clone) {
    let mut cmd = command("git", server.path());
    cmd.args(["config", "receive.advertisePushOptions", "true"])
        .current_dir(&server.bare);
    run(&mut cmd, "git config").success();
    clone.commit_file("a", "2\n");
    let push = clone.push_args(&["-o", "ats.skip\x1b[8m", "main"]);
    no_raw_escapes("a push option's error", &push.stderr());
    push.stderr_has("unknown push option `ats.skip\\u{1b}[8m`");
}
