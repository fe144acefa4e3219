//! `ats-hook releases [--json]`: the releases on disk, oldest first, with what made them.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::Location;
use crate::state::layout::Layout;
use crate::state::record::{self, DeployRecord};
use crate::state::refs::short_ref;
use crate::sys::output::short;

#[derive(Debug, Serialize)]
struct ReleaseInfo {
    id: String,
    commit: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// The state of the deploy that made it; `unknown` when the history has no such deploy.
    state: String,
    created: Option<String>,
    /// The schema fingerprint of its migrations (`step.migrations`).
    schema: Option<String>,
    /// Who pushed it, its commit's subject line, and the push's note.
    pusher: Option<String>,
    subject: Option<String>,
    note: Option<String>,
    live: bool,
    rollback_target: bool,
    /// The stored builds its outputs link to.
    outputs: Vec<OutputInfo>,
    /// With `[compose]`: the images it built, service → image id (a rollback runs these).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    images: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct OutputInfo {
    step: String,
    paths: Vec<String>,
    key: String,
    build: String,
}

pub fn run(location: &Location, json: bool, out: &mut dyn Write) -> Result<ExitCode> {
    let config = super::load(location)?;
    let layout = Layout::new(&config.deploy.root);
    let records = record::read_all(&layout.deploys_file())?;
    let mut ids = layout.release_ids()?;
    record::sort_chronologically(&mut ids, &records);
    let live = layout.live_release()?;
    let rollback = record::rollback_target(&records, live.as_deref(), &ids).cloned();
    let releases: Vec<ReleaseInfo> = ids
        .iter()
        .map(|id| {
            let made = record::deploy_of(&records, id);
            ReleaseInfo {
                id: id.clone(),
                commit: made.map(|r| r.commit.clone()),
                git_ref: made.map(|r| r.git_ref.clone()),
                state: made.map_or("unknown", |r| r.state.as_str()).to_string(),
                created: made.map(|r| r.started_at.clone()),
                schema: made.and_then(|r| r.schema.clone()),
                pusher: made.map(|r| r.pusher.clone()),
                subject: made.and_then(|r| r.subject.clone()),
                note: made.and_then(|r| r.note.clone()),
                live: live.as_deref() == Some(id),
                rollback_target: rollback.as_deref() == Some(id),
                outputs: record::outputs_of(&records, id)
                    .map(|(step, output)| OutputInfo {
                        step: step.to_string(),
                        paths: output.paths.clone(),
                        key: output.key.clone(),
                        build: output.build.clone(),
                    })
                    .collect(),
                images: match config.compose {
                    Some(_) => crate::live::compose::images(&layout, id),
                    None => Default::default(),
                },
            }
        })
        .collect();
    if json {
        serde_json::to_writer_pretty(&mut *out, &releases).context("failed to write releases")?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if releases.is_empty() {
        writeln!(out, "no releases in {}", layout.releases().display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = releases.iter().map(|r| r.id.len()).max().unwrap_or(0);
    let by_width = releases
        .iter()
        .map(|r| r.pusher.as_deref().map_or(1, str::len))
        .max()
        .unwrap_or(0)
        .max(2);
    writeln!(
        out,
        "  {:width$}  {:7}  {:12}  {:11}  {:20}  {:by_width$}  OUTPUTS",
        "RELEASE", "COMMIT", "REF", "STATE", "CREATED", "BY"
    )?;
    let mut previous_schema: Option<&str> = None;
    for release in &releases {
        let marker = if release.live { "*" } else { " " };
        let note = if release.live {
            "  (live)"
        } else if release.rollback_target {
            "  (rollback target)"
        } else {
            ""
        };
        let outputs: Vec<String> = release
            .outputs
            .iter()
            .map(|o| format!("{}={}", o.step, crate::sys::output::prefix(&o.key, 12)))
            .collect();
        let mut outputs = if outputs.is_empty() {
            "-".to_string()
        } else {
            outputs.join(",")
        };
        // The schema, marked where it changed from the release before.
        if let Some(schema) = &release.schema {
            let changed = previous_schema.is_some_and(|p| p != schema.as_str());
            outputs.push_str(&format!(
                "  schema {}{}",
                crate::sys::output::prefix(schema, 8),
                if changed { " (changed)" } else { "" }
            ));
        }
        previous_schema = release.schema.as_deref();
        if !release.images.is_empty() {
            let images: Vec<String> = release
                .images
                .iter()
                .map(|(service, id)| {
                    let id = id.strip_prefix("sha256:").unwrap_or(id);
                    format!("{service}={}", crate::sys::output::prefix(id, 12))
                })
                .collect();
            outputs.push_str(&format!("  images {}", images.join(",")));
        }
        writeln!(
            out,
            "{marker} {:width$}  {:7}  {:12}  {:11}  {:20}  {:by_width$}  {outputs}{note}{}",
            release.id,
            release.commit.as_deref().map(short).unwrap_or("-"),
            release.git_ref.as_deref().map(short_ref).unwrap_or("-"),
            release.state,
            release.created.as_deref().unwrap_or("-"),
            crate::sys::output::printable(release.pusher.as_deref().unwrap_or("-")),
            record::deploy_of(&records, &release.id)
                .map(DeployRecord::about)
                .unwrap_or_default(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
