//! Scheduled jobs declared in the release's `schedule.toml`: installed by each deploy into
//! a real crontab (and run by a real cron daemon) or as real systemd timers of a private
//! systemd; what each run did, read back from its record, its log and the files it wrote.

mod cron;
mod timers;

use crate::support::*;
use serde_json::Value;

/// A deploy root whose jobs `installer` installs, and a step that fails while the commit
/// has a file `FAIL`.
pub fn config(installer: &str) -> String {
    format!(
        "[deploy]\nroot = \"ROOT\"\nkeep_releases = 5\n\n[jobs]\ninstaller = \"{installer}\"\n\n         [[step]]\nname = \"check\"\nrun = \"test ! -e FAIL\"\n"
    )
}

/// The runs recorded so far, oldest first.
pub fn runs(server: &Server) -> Vec<Value> {
    let path = server.root.join(".ats-hook/jobs/runs.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The runs of `job` that ended with `outcome`.
pub fn runs_of(server: &Server, job: &str, outcome: &str) -> Vec<Value> {
    runs(server)
        .into_iter()
        .filter(|r| r["job"] == job && r["outcome"] == outcome)
        .collect()
}

/// The lines of a file under the deploy root (none when it is missing).
pub fn lines_of(server: &Server, path: &str) -> Vec<String> {
    std::fs::read_to_string(server.root.join(path))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Two runs overlapped: one started before the other had finished.
pub fn overlapping(runs: &[Value]) -> Option<(String, String)> {
    let mut spans: Vec<(String, String, String)> = runs
        .iter()
        .map(|r| {
            (
                r["started_at"].as_str().unwrap().to_string(),
                r["finished_at"].as_str().unwrap().to_string(),
                r["run"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    spans
        .windows(2)
        .find(|w| w[1].0 < w[0].1)
        .map(|w| (w[0].2.clone(), w[1].2.clone()))
}
