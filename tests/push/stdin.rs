//! Malformed ref lines on the hook's stdin: an error naming the line, nothing on disk.

use crate::support::*;

const A: &str = "1111111111111111111111111111111111111111";
const Z: &str = "0000000000000000000000000000000000000000";

#[track_caller]
fn refused(server: &Server, stdin: &[u8], needle: &str) {
    server.hook_with_stdin(stdin).code(1).stderr_has(needle);
    assert!(
        !server.root.exists(),
        "a refused input created `{}`",
        server.root.display()
    );
}

#[test]
fn malformed_ref_lines_are_refused_naming_the_line() {
    let server = Server::new();
    refused(
        &server,
        format!("{Z} {A} refs/heads/main\n{A} refs/heads/main\n").as_bytes(),
        "malformed ref line 2",
    );
    refused(
        &server,
        format!("{Z} {A} refs/heads/main extra\n").as_bytes(),
        "expected 3 fields separated by single spaces, found 4",
    );
    refused(
        &server,
        format!("{Z} 12345 refs/heads/main\n").as_bytes(),
        "new sha `12345` is not 40 hex digits",
    );
    refused(
        &server,
        format!("{Z} {} refs/heads/main\n", "g".repeat(40)).as_bytes(),
        "is not 40 hex digits",
    );
    refused(&server, b"", "no ref updates on standard input");
    refused(
        &server,
        "x".repeat(1 << 20).as_bytes(),
        "ref line 1 is longer than 4096 bytes",
    );
    refused(&server, b"\xff\xfe\n", "ref line 1 is not UTF-8");
}

#[test]
fn a_well_formed_line_for_a_missing_commit_is_a_clear_error() {
    let server = Server::new();
    server
        .hook_with_stdin(format!("{Z} {A} refs/heads/main\n").as_bytes())
        .code(1)
        .stderr_has(&format!(
            "`refs/heads/main` points at `{A}`, which is not a commit"
        ));
    assert!(!server.root.exists());
}
