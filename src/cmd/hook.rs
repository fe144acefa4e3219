//! Hook mode: what `hooks/post-receive` and `hooks/pre-receive` run. git feeds the pushed refs
//! on stdin. In pre-receive (gate mode) the pushed objects are still in git's quarantine, which
//! opening the repository from git's environment takes care of, and a failed deploy's exit
//! status makes git reject the push.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::Location;
use crate::pipeline::deploy;
use crate::pipeline::Trigger;
use crate::state::push_options::PushOptions;
use crate::state::{refs, select};
use crate::sys::output;

pub fn run(location: &Location, trigger: Trigger, stdin: impl BufRead) -> Result<ExitCode> {
    let updates = refs::parse(stdin)?;
    let refused = if trigger == Trigger::PreReceive {
        "push rejected, nothing deployed"
    } else {
        "nothing deployed"
    };
    let options = PushOptions::from_env().context(refused)?;
    let (repo, apps) = super::open_apps(location)?;
    if apps.several() {
        let configs: Vec<&crate::config::Config> =
            apps.list.iter().map(|app| &app.config).collect();
        options.check_apps(&configs).context(refused)?;
        if options.dry_run {
            return dry_run_apps(&repo, &apps, &updates, trigger, &options);
        }
        return crate::pipeline::apps::deploy(&repo, &apps, &updates, trigger, &options);
    }
    let config = apps.pick(None)?;
    options.check(&config).context(refused)?;
    let Some(target) = select::select(&repo, &config, &updates)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if !options.dry_run {
        return deploy::deploy(&repo, &config, &target, trigger, &options);
    }
    dry_run(&repo, &[(&config, target)], trigger, &options)
}

/// A dry run of a push to several apps: each app's plan.
fn dry_run_apps(
    repo: &git2::Repository,
    apps: &crate::config::Apps,
    updates: &[refs::RefUpdate],
    trigger: Trigger,
    options: &PushOptions,
) -> Result<ExitCode> {
    let mut targets = Vec::new();
    for app in &apps.list {
        if let (Some(update), _) = select::choose(&app.config, updates) {
            targets.push((&app.config, select::target(repo, update)?));
        }
    }
    if targets.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    dry_run(repo, &targets, trigger, options)
}

/// Prints what each app's deploy would do, and deploys nothing.
fn dry_run(
    repo: &git2::Repository,
    targets: &[(&crate::config::Config, select::Target)],
    trigger: Trigger,
    options: &PushOptions,
) -> Result<ExitCode> {
    for (config, target) in targets {
        let mut plan = Vec::new();
        crate::pipeline::plan::dry_run(repo, config, target, options, &mut plan)?;
        let app = config
            .app
            .as_deref()
            .map(|app| format!("{app}: "))
            .unwrap_or_default();
        for line in String::from_utf8_lossy(&plan).lines() {
            output::say(format!("dry run: {app}{line}"));
        }
    }
    let (_, target) = targets.last().expect("a dry run has a target");
    let commit = target.commit.to_string();
    if trigger == Trigger::PreReceive {
        output::say(format!(
            "dry run: nothing deployed, and the push is rejected so that `{}` stays where it was",
            refs::short_ref(&target.git_ref)
        ));
        Ok(ExitCode::FAILURE)
    } else {
        output::say(format!(
            "dry run: nothing deployed; `{}` is at {} now: deploy it with your next push, or with `ats-hook deploy {}` on the server",
            refs::short_ref(&target.git_ref),
            output::short(&commit),
            output::short(&commit)
        ));
        Ok(ExitCode::SUCCESS)
    }
}
