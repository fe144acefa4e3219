//! `ats-hook check`: validate the config and print the plan a push would run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Location;
use crate::pipeline::plan::{write_outputs_plan, write_plan};

pub fn run(location: &Location, out: &mut dyn Write) -> Result<ExitCode> {
    let config = super::load(location)?;
    write_plan(&config, out)?;
    if let Ok(repo) = super::repo_dir(location) {
        let is_repo = repo.join("objects").is_dir() && repo.join("config").is_file();
        if is_repo && !super::install::has_setting(&repo, super::install::PUSH_OPTIONS) {
            writeln!(
                out,
                "push options: not advertised, so `git push -o ats.…` fails (\"the receiving end does not support push options\"); fix: `git -C {} config {} true` (`ats-hook install` sets it)",
                repo.display(),
                super::install::PUSH_OPTIONS
            )?;
        }
        if is_repo && !super::install::has_setting(&repo, super::install::FSCK_OBJECTS) {
            writeln!(
                out,
                "objects:   git stores pushed objects unchecked (ats-hook still refuses trees git never writes); fix: `git -C {} config {} true` (`ats-hook install` sets it)",
                repo.display(),
                super::install::FSCK_OBJECTS
            )?;
        }
    }
    if config.notify.as_ref().is_some_and(|n| n.webhook.is_some()) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&config.path).is_ok_and(|m| m.mode() & 0o004 != 0) {
            writeln!(
                out,
                "warning:   `{}` holds a webhook URL (a token) and every local user can read it; fix: `chmod 640 {}`",
                config.path.display(),
                config.path.display()
            )?;
        }
    }
    if config.steps.iter().any(|step| step.has_outputs()) {
        // The repository is only read for this part: `check` also serves an admin who cannot
        // open it.
        let tip = super::repo_dir(location)
            .ok()
            .and_then(|dir| git2::Repository::open_bare(dir).ok())
            .and_then(|repo| {
                let git_ref = config.default_ref()?;
                let commit = repo.refname_to_id(&git_ref).ok()?;
                Some((repo, commit, git_ref))
            });
        match tip {
            Some((repo, commit, git_ref)) => {
                write_outputs_plan(&config, &repo, commit, &git_ref, out)?
            }
            None => writeln!(
                out,
                "outputs:   (no branch tip to compute keys at: push first, or run as the repository's owner)"
            )?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
