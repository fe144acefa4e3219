//! `ats-hook check`: validate the config and print the plan a push would run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::Location;
use crate::config::{Config, Installer, Schedule};
use crate::pipeline::plan::{write_outputs_plan, write_plan};

/// How many of the branch's last commits `check` shows the apps of.
const SAMPLE: usize = 8;

pub fn run(location: &Location, out: &mut dyn Write) -> Result<ExitCode> {
    let apps = super::load_apps(location)?;
    if !apps.several() || location.app.is_some() {
        let config = apps.pick(location.app.as_deref())?;
        one(&config, location, out)?;
        if !crate::release::view::View::of(&config.deploy).is_whole() {
            write_pushes(&[&config], location, out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "config {} is valid: {} apps, deployed in this order: {}",
        apps.path.display(),
        apps.list.len(),
        apps.names()
    )?;
    for app in &apps.list {
        writeln!(out)?;
        writeln!(out, "app {}:", app.name.as_deref().unwrap_or_default())?;
        one(&app.config, location, out)?;
    }
    writeln!(out)?;
    let configs: Vec<&Config> = apps.list.iter().map(|app| &app.config).collect();
    write_pushes(&configs, location, out)?;
    Ok(ExitCode::SUCCESS)
}

/// For the branch's last commits, each pushed alone on top of its parent: which apps it would
/// have deployed (an app of the whole repository deploys with every push).
fn write_pushes(configs: &[&Config], location: &Location, out: &mut dyn Write) -> Result<()> {
    let Some((repo, tip, git_ref)) = branch_tip(configs[0], location) else {
        return Ok(());
    };
    let short_ref = crate::state::refs::short_ref(&git_ref);
    writeln!(
        out,
        "pushes:    what each of the last commits of `{short_ref}` would deploy, pushed alone:"
    )?;
    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    walk.simplify_first_parent()?;
    // The sample and the parent of its last, each commit's trees read once.
    let commits: Vec<git2::Oid> = walk.take(SAMPLE + 1).collect::<Result<_, _>>()?;
    let views: Vec<_> = configs
        .iter()
        .map(|config| crate::release::view::View::of(&config.deploy))
        .collect();
    let trees: Vec<Vec<Option<git2::Oid>>> = views
        .iter()
        .map(|view| {
            commits
                .iter()
                .map(|c| view.tree(&repo, *c).ok().map(|t| t.id()))
                .collect()
        })
        .collect();
    for (n, id) in commits.iter().enumerate().take(SAMPLE) {
        let commit = repo.find_commit(*id)?;
        let has_parent = commit.parent_count() > 0;
        let mut deploys = Vec::new();
        for ((config, view), trees) in configs.iter().zip(&views).zip(&trees) {
            let changed = view.is_whole()
                || !has_parent
                || trees.get(n + 1).map_or(true, |parent| *parent != trees[n]);
            if changed {
                deploys.push(config.app.clone().unwrap_or_else(|| view.folders()));
            }
        }
        let subject =
            String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default()).into_owned();
        writeln!(
            out,
            "  {}  {:<40}  {}",
            crate::sys::output::short(&commit.id().to_string()),
            crate::sys::output::prefix(&crate::sys::output::printable(&subject), 40),
            if deploys.is_empty() {
                "nothing".to_string()
            } else {
                deploys.join(", ")
            }
        )?;
    }
    Ok(())
}

/// Validates one app's config and prints its plan.
fn one(config: &Config, location: &Location, out: &mut dyn Write) -> Result<()> {
    write_plan(config, out)?;
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
    // The repository is only read for these parts: `check` also serves an admin who cannot
    // open it.
    let tip = branch_tip(config, location);
    if let Some((repo, commit, git_ref)) = &tip {
        write_jobs_plan(config, repo, *commit, git_ref, out)?;
    }
    if config.steps.iter().any(|step| step.has_outputs()) {
        match tip {
            Some((repo, commit, git_ref)) => {
                write_outputs_plan(config, &repo, commit, &git_ref, out)?
            }
            None => writeln!(
                out,
                "outputs:   (no branch tip to compute keys at: push first, or run as the repository's owner)"
            )?,
        }
    }
    Ok(())
}

/// The bare repository and the tip of the branch a push deploys, when both can be read.
fn branch_tip(
    config: &Config,
    location: &Location,
) -> Option<(git2::Repository, git2::Oid, String)> {
    let repo = git2::Repository::open_bare(super::repo_dir(location).ok()?).ok()?;
    crate::release::view::in_memory_writes(&repo).ok()?;
    let git_ref = config.default_ref()?;
    let commit = repo.refname_to_id(&git_ref).ok()?;
    Some((repo, commit, git_ref))
}

/// The scheduled jobs the branch tip declares, as a push would install them, with each one's
/// next run; a schedule that would not install is an error, as it is for the push.
fn write_jobs_plan(
    config: &Config,
    repo: &git2::Repository,
    commit: git2::Oid,
    git_ref: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let file = config.jobs.file.to_string();
    let text = crate::release::view::View::of(&config.deploy)
        .tree(repo, commit)
        .ok()
        .and_then(|tree| tree.get_path(config.jobs.file.as_path()).ok())
        .and_then(|entry| repo.find_blob(entry.id()).ok())
        .map(|blob| String::from_utf8_lossy(blob.content()).into_owned());
    let Some(text) = text else {
        return Ok(());
    };
    let short_ref = crate::state::refs::short_ref(git_ref);
    let schedule = Schedule::parse(&text, &file, config.jobs.installer)
        .with_context(|| format!("the jobs at the tip of `{short_ref}` would not install"))?;
    let installer = config.jobs.installer.resolve();
    writeln!(
        out,
        "jobs:      {} from `{file}` at the tip of `{short_ref}`, installed with {}{}",
        schedule.jobs.len(),
        installer.as_str(),
        match installer {
            Installer::SystemdUser =>
                " (user units: `loginctl enable-linger` keeps them running without a login)",
            _ => "",
        }
    )?;
    for job in &schedule.jobs {
        let next = job
            .schedule
            .next_run()
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S %Z").to_string())
            .unwrap_or_else(|| "never".into());
        writeln!(
            out,
            "           {} `{}`: `{}` in the live release, timeout {}, overlap {}; next run {next}",
            job.name,
            job.schedule,
            job.run,
            job.timeout,
            job.overlap.as_str()
        )?;
    }
    Ok(())
}
