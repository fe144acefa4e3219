//! `ats-hook log [ID] [--json]`: the deploy history, or one deploy's full output. ID is a
//! deploy id, a release id, or the start of a commit (the newest deploy of it).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::Location;
use crate::state::layout::Layout;
use crate::state::record::{self, Action, DeployRecord};
use crate::state::refs::short_ref;
use crate::sys::output::{seconds, short};

pub fn run(
    location: &Location,
    id: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let config = super::load(location)?;
    let layout = Layout::new(&config.deploy.root);
    let records = record::read_all(&layout.deploys_file())?;
    let Some(id) = id else {
        if json {
            serde_json::to_writer_pretty(&mut *out, &records)
                .context("failed to write the history")?;
            writeln!(out)?;
            return Ok(ExitCode::SUCCESS);
        }
        if records.is_empty() {
            writeln!(out, "no deploys yet")?;
        }
        // Rollback ids are longer than deploy ids: one width for the column.
        let width = records.iter().map(|r| r.id.len()).max().unwrap_or(0);
        for r in &records {
            let what = match r.action {
                Action::Deploy => "deploy  ",
                Action::Rollback => "rollback",
            };
            let why = r
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{:width$}  {what}  {:11}  {} ({})  {:>6}  by {}{}{why}",
                r.id,
                r.state.as_str(),
                short(&r.commit),
                short_ref(&r.git_ref),
                seconds(std::time::Duration::from_millis(r.duration_ms)),
                crate::sys::output::printable(&r.pusher),
                r.about()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let (id, record) = find(&records, id);
    let log_path = layout.log_file(id);
    let output = match std::fs::read_to_string(&log_path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(err).with_context(|| format!("failed to read `{}`", log_path.display()))
        }
    };
    if record.is_none() && output.is_none() {
        bail!(
            "no deploy `{id}` in the history of `{}`; `ats-hook log` lists them",
            layout.root().display()
        );
    }
    if json {
        let value = serde_json::json!({ "record": record, "output": output });
        serde_json::to_writer_pretty(&mut *out, &value).context("failed to write the deploy")?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    match output {
        Some(text) => out.write_all(text.as_bytes())?,
        None => writeln!(out, "(no output kept for `{id}`)")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The deploy `wanted` names: its id, else the newest deploy of a release of that id, else the
/// newest deploy of a commit starting with it (4 hex digits at least).
fn find<'a>(records: &'a [DeployRecord], wanted: &'a str) -> (&'a str, Option<&'a DeployRecord>) {
    if let Some(record) = records.iter().rev().find(|r| r.id == wanted) {
        return (wanted, Some(record));
    }
    let is_prefix = wanted.len() >= 4 && wanted.chars().all(|c| c.is_ascii_hexdigit());
    let found = records.iter().rev().find(|r| {
        r.release == wanted || (is_prefix && r.commit.starts_with(&wanted.to_ascii_lowercase()))
    });
    match found {
        Some(record) => (record.id.as_str(), Some(record)),
        None => (wanted, None),
    }
}
