//! The deploy history: one JSON line per deploy in `<root>/.ats-hook/deploys.jsonl`.
//!
//! Append-only, one `write` per record on a file opened with `O_APPEND`, so a reader never sees
//! half a record and the history survives anything short of the disk itself. It is also where the
//! pipeline learns which commit a release holds and where a rollback would go.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Succeeded,
    Failed,
    RolledBack,
    Interrupted,
    /// Failed once live, and left live: its migrations changed the schema, and the old release
    /// cannot run on the new one (no `down` command, or it failed).
    FailedForward,
    /// Overtaken while it waited for the lock by a newer push of the same ref, which deploys
    /// instead (`deploy.queue = "newest"`); nothing was changed.
    Superseded,
    /// A push that left the app's folder (`deploy.path`, `deploy.paths`) as the live release
    /// holds it: nothing was deployed, nothing changed.
    Unchanged,
    /// Written just before `current` is switched; the deploy's final record replaces it. Found
    /// as the last word of a deploy, it means the deploy died after the switch.
    Switching,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::FailedForward => "failed-forward",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RolledBack => "rolled-back",
            State::Interrupted => "interrupted",
            State::Superseded => "superseded",
            State::Unchanged => "unchanged",
            State::Switching => "switching",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Ok,
    Failed,
    TimedOut,
    Interrupted,
    /// Its outputs were already built for the same key, and linked into the release.
    Reused,
    /// Skipped because the push asked (`ats.skip`); earlier versions also recorded this for a
    /// step whose inputs were unchanged.
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    /// The exit status as a shell reports it (128+N for a signal); absent on a timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// A digest of the step's inputs at this commit, for steps that declare inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
    /// For a step with outputs: the build the release links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<StepOutput>,
}

/// Which stored build a release's outputs of one step link to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepOutput {
    pub key: String,
    pub build: String,
    pub paths: Vec<String>,
}

/// What a history entry did.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A new release went (or tried to go) live.
    #[default]
    Deploy,
    /// An existing release was made live again.
    Rollback,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeployRecord {
    pub id: String,
    #[serde(default)]
    pub action: Action,
    /// The hook that ran it (`post-receive`, `pre-receive`); absent for a command run by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub old_commit: Option<String>,
    pub commit: String,
    /// The commit's subject line, as the history shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub release: String,
    /// The release that was live when this deploy started.
    pub previous_release: Option<String>,
    /// With `[serve]`: the slot the release was started on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The old release this one was built from (renamed and updated), if it was not checked
    /// out whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<String>,
    /// How long making the release's files took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_ms: Option<u64>,
    /// How long making the release durable before the switch took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ms: Option<u64>,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: Vec<StepRecord>,
    pub pusher: String,
    /// The fingerprint of the schema the release's migrations define (`step.migrations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The push's note (`git push -o ats.note=…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Whether the push asked not to restart the app (`ats.no-restart`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_restart: bool,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
}

impl DeployRecord {
    /// `  "Fix the login form" (note: hotfix for the release)`: what a person reads a deploy by.
    pub fn about(&self) -> String {
        let mut text = String::new();
        if let Some(subject) = &self.subject {
            text.push_str(&format!("  \"{}\"", clip(subject, 60)));
        }
        if let Some(note) = &self.note {
            text.push_str(&format!("  (note: {})", clip(note, 80)));
        }
        text
    }
}

/// `text`, cut to `max` characters with `…` when longer, its control characters escaped (a
/// commit's subject is the pusher's to write).
fn clip(text: &str, max: usize) -> String {
    let text = crate::sys::output::printable(text);
    if text.chars().count() <= max {
        text.into_owned()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// Who pushed: set by the SSH gate when known, else who ran `sudo` (`sudo -u deployer
/// ats-hook rollback` is the admin's), else the account running the hook.
pub fn pusher() -> String {
    for key in ["ATS_PUSHER", "SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(value) = std::env::var(key) {
            if !value.is_empty() {
                return value;
            }
        }
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

/// Appends one record and makes it durable before returning, so that whatever the pusher reads
/// next is already in the history. A last line left torn (a power loss or a full disk during an
/// earlier append) is closed first: the new record starts on a line of its own.
pub fn append<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let mut line = serde_json::to_string(record).context("failed to encode the record")?;
    line.push('\n');
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to open history `{}`", path.display()))?;
    if ends_torn(&mut file)? {
        line.insert(0, '\n');
    }
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_data())
        .with_context(|| format!("failed to append to history `{}`", path.display()))
}

/// Whether the file's last byte is something other than a newline.
fn ends_torn(file: &mut std::fs::File) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata().context("failed to stat the history")?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))
        .and_then(|_| file.read_exact(&mut last))
        .context("failed to read the end of the history")?;
    Ok(last[0] != b'\n')
}

/// Every record, oldest first. Lines that do not parse (a record torn by a power loss or a full
/// disk) are skipped, with one warning, rather than hiding the rest of the history.
pub fn read_all(path: &Path) -> Result<Vec<DeployRecord>> {
    let text = match std::fs::read(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("failed to read history `{}`", path.display()))?,
    };
    let mut records: Vec<DeployRecord> = Vec::new();
    let mut damaged = Vec::new();
    // Where each deploy's record of its switch is: its final record takes that place.
    let mut switching = std::collections::HashMap::new();
    for (number, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: DeployRecord = match serde_json::from_slice(line) {
            Ok(record) => record,
            Err(_) => {
                damaged.push(number + 1);
                continue;
            }
        };
        match switching.remove(&record.id) {
            Some(at) => records[at] = record,
            None => {
                if record.state == State::Switching {
                    switching.insert(record.id.clone(), records.len());
                }
                records.push(record);
            }
        }
    }
    if let Some(first) = damaged.first() {
        crate::sys::output::warn(format!(
            "history `{}`: skipped {} that did not parse (line {first}{}), most likely cut by a power loss or a full disk",
            path.display(),
            crate::sys::output::count(damaged.len(), "damaged line"),
            if damaged.len() > 1 { " and more" } else { "" }
        ));
    }
    Ok(records)
}

/// The newest record of a deploy that made `release` live (one that failed forward stays live).
pub fn live_record<'a>(records: &'a [DeployRecord], release: &str) -> Option<&'a DeployRecord> {
    records.iter().rev().find(|r| {
        r.release == release && matches!(r.state, State::Succeeded | State::FailedForward)
    })
}

/// Where a rollback from `live` goes: the newest release older than `live` that went live
/// successfully (failed and rolled-back releases are skipped). `on_disk` is oldest first.
pub fn rollback_target<'a>(
    records: &[DeployRecord],
    live: Option<&str>,
    on_disk: &'a [String],
) -> Option<&'a String> {
    let older = match live.and_then(|live| on_disk.iter().position(|id| id == live)) {
        Some(position) => &on_disk[..position],
        None => on_disk,
    };
    older.iter().rev().find(|id| went_live(records, id))
}

/// Whether a release's own deploy put it live successfully.
pub fn went_live(records: &[DeployRecord], release: &str) -> bool {
    records
        .iter()
        .any(|r| r.action == Action::Deploy && r.release == release && r.state == State::Succeeded)
}

/// The deploy that made a release (the newest one, should an id repeat).
pub fn deploy_of<'a>(records: &'a [DeployRecord], release: &str) -> Option<&'a DeployRecord> {
    records
        .iter()
        .rev()
        .find(|r| r.action == Action::Deploy && r.release == release)
}

/// The builds a release's outputs link to, as its deploy recorded them: (step, build, output).
pub fn outputs_of<'a>(
    records: &'a [DeployRecord],
    release: &str,
) -> impl Iterator<Item = (&'a str, &'a StepOutput)> {
    deploy_of(records, release)
        .into_iter()
        .flat_map(|made| made.steps.iter())
        .filter_map(|step| step.output.as_ref().map(|o| (step.name.as_str(), o)))
}

/// Orders release ids oldest first: by their timestamp, and within one second by the order the
/// history recorded them (ids of the same second otherwise sort by sha).
pub fn sort_chronologically(ids: &mut [String], records: &[DeployRecord]) {
    ids.sort_by_cached_key(|id| {
        let stamp = id.split('-').next().unwrap_or("").to_string();
        let recorded = records
            .iter()
            .position(|r| r.release == *id)
            .unwrap_or(usize::MAX);
        (stamp, recorded, id.clone())
    });
}
