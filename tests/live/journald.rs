//! A deploy's events reach a real journald with their deploy id, commit, ref and step as fields.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pretty_assertions::assert_eq;

use crate::support::*;

const SOCKET: &str = "/run/systemd/journal/socket";
const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// A journald this test started, stopped when the test ends.
struct Journald(Option<Child>);

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Uses the running journald, or starts one (TESTBED.md: it runs without systemd as PID 1).
fn journald() -> Journald {
    // A socket file left by a journald that is gone refuses connections.
    let listening = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(SOCKET))
        .is_ok();
    if listening {
        return Journald(None);
    }
    assert!(
        Path::new(JOURNALD).exists(),
        "{JOURNALD} is missing: install Debian's `systemd` package (tests/run does)"
    );
    let child = Command::new(JOURNALD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("journald's socket", Duration::from_secs(10), || {
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(SOCKET))
            .is_ok()
    });
    Journald(Some(child))
}

fn journal_entries(deploy_id: &str) -> Vec<serde_json::Value> {
    let output = Command::new("journalctl")
        .args(["--no-pager", "-o", "json", "-t", "ats-hook"])
        .arg(format!("DEPLOY_ID={deploy_id}"))
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[test]
fn deploy_events_reach_the_journal_with_their_fields() {
    let _journald = journald();
    let server = Server::new();
    server.config("[deploy]\nroot = \"ROOT\"\n[[step]]\nname = \"install\"\nrun = \"echo journal-probe-line\"\n");
    let clone = server.clone("work");
    let sha = clone.commit_file("a", "a");
    clone.push().success();
    let id = server.live().unwrap();

    let mut entries = Vec::new();
    wait_for(
        "the deploy's summary in the journal",
        Duration::from_secs(15),
        || {
            entries = journal_entries(&id);
            entries.iter().any(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("deployed "))
            })
        },
    );
    for entry in &entries {
        assert_eq!(entry["COMMIT"], sha.as_str());
        assert_eq!(entry["GIT_REF"], "refs/heads/main");
        assert_eq!(entry["SYSLOG_IDENTIFIER"], "ats-hook");
    }
    let step_line = entries
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("journal-probe-line"))
        })
        .expect("the step's output is in the journal");
    assert_eq!(step_line["STEP"], "install");
    assert!(entries
        .iter()
        .any(|e| e["MESSAGE"] == format!("deploying {} (main) as {id}", &sha[..7])));
}
