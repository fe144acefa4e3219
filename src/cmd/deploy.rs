//! `ats-hook deploy [REV] [--ref REF] [--skip STEP] [--no-restart] [--note TEXT] [--dry-run]`: a
//! deploy by hand, through the same pipeline as a push, with the flags a push gives as options.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::Location;
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
    let (repo, config) = super::open(location)?;
    options.check(&config)?;
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
    let target = Target {
        git_ref,
        old,
        commit: commit.id(),
    };
    if options.dry_run {
        crate::pipeline::plan::dry_run(&repo, &config, &target, options, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    deploy::deploy(&repo, &config, &target, Trigger::Manual, options)
}
