//! `ats-hook deploy [REV] [--ref REF] [--skip STEP] [--no-restart] [--note TEXT] [--dry-run]`: a
//! deploy by hand, through the same pipeline as a push, with the flags a push gives as options.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::Location;
use crate::config::Config;
use crate::pipeline::{deploy, Trigger};
use crate::state::push_options::PushOptions;
use crate::state::select::Target;

pub fn run(
    location: &Location,
    rev: Option<&str>,
    git_ref: Option<&str>,
    options: &PushOptions,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let (repo, apps) = super::open_apps(location)?;
    // Without `--app`, every app of the config deploys, together, as a push would.
    let configs: Vec<Config> = if apps.several() && location.app.is_none() {
        apps.list.into_iter().map(|app| app.config).collect()
    } else {
        vec![apps.pick(location.app.as_deref())?]
    };
    let refs: Vec<&Config> = configs.iter().collect();
    options.check_apps(&refs)?;
    let mut targets = Vec::new();
    for config in &configs {
        targets.push((config, target(&repo, config, rev, git_ref)?));
    }
    if options.dry_run {
        for (config, target) in &targets {
            if let Some(app) = &config.app {
                writeln!(out, "app {app}:")?;
            }
            crate::pipeline::plan::dry_run(&repo, config, target, options, out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match targets.as_slice() {
        [(config, target)] if config.app.is_none() || location.app.is_some() => {
            deploy::deploy(&repo, config, target, Trigger::Manual, options)
        }
        targets => crate::pipeline::apps::deploy_targets(&repo, targets, Trigger::Manual, options),
    }
}

/// What `REV` and `--ref` name for one app's config.
fn target(
    repo: &git2::Repository,
    config: &Config,
    rev: Option<&str>,
    git_ref: Option<&str>,
) -> Result<Target> {
    let git_ref = match git_ref {
        Some(name) if name.starts_with("refs/") => name.to_string(),
        Some(name) => format!("refs/heads/{name}"),
        None => config.default_ref().context(
            "no branch to deploy: pass `--ref REF` (the config deploys no plain branch name)",
        )?,
    };
    let rev = rev.unwrap_or(&git_ref);
    let commit = repo
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .with_context(|| {
            format!(
                "`{rev}` does not name a commit in `{}`",
                repo.path().display()
            )
        })?;
    let old = repo.refname_to_id(&git_ref).ok();
    Ok(Target {
        git_ref,
        old,
        commit: commit.id(),
    })
}
