//! A push of several apps (`[apps.NAME]`): each app the push concerns deploys, in the order
//! the config lists them, and all of them go live together or none does.
//!
//! Stage by stage: every app takes its deploy lock (in the config's order, so that two pushes
//! never wait for each other), then every app makes its release and runs its steps; only when
//! all passed does any switch, one after the other. A failure before the switch leaves every
//! app as it was (the apps that were ready are recorded as not switched, and a migration one
//! of them ran is reversed with its `down`); a failure once live switches back the app that
//! failed and every app of the push that went live before it. Each app keeps its own history,
//! log and summary line; the last line the pusher reads sums the push up.
//!
//! An app whose folders the push left unchanged deploys nothing (`deploy.path`). Each final
//! record is written once every app is through: a push killed half way is found by each app's
//! next run as a deploy that died, which puts back what was live.

use std::process::ExitCode;

use anyhow::Result;
use git2::Repository;

use super::deploy::Run;
use super::go_live::switch_back;
use super::session::Trigger;
use super::stop::Stop;
use crate::config::{Apps, Config};
use crate::state::push_options::PushOptions;
use crate::state::record::State;
use crate::state::refs::RefUpdate;
use crate::state::select::{self, Target};
use crate::sys::output;

/// Deploys every app of `apps` that the pushed refs `updates` concern.
pub fn deploy(
    repo: &Repository,
    apps: &Apps,
    updates: &[RefUpdate],
    trigger: Trigger,
    options: &PushOptions,
) -> Result<ExitCode> {
    let choices: Vec<_> = apps
        .list
        .iter()
        .map(|app| (&app.config, select::choose(&app.config, updates)))
        .collect();
    let mut targets: Vec<(&Config, Target)> = Vec::new();
    let mut said: Vec<String> = Vec::new();
    for (config, (chosen, notes)) in &choices {
        for note in notes {
            // Said once when every app would say it, else for its app.
            let note = if choices.iter().all(|(_, (_, other))| other.contains(note)) {
                note.clone()
            } else {
                format!("{}: {note}", config.app.as_deref().unwrap_or_default())
            };
            if !said.contains(&note) {
                output::say(&note);
                said.push(note);
            }
        }
        if let Some(update) = chosen {
            targets.push((*config, select::target(repo, update)?));
        }
    }
    if targets.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    deploy_targets(repo, &targets, trigger, options)
}

/// Deploys each app to its target, all together or not at all.
pub fn deploy_targets(
    repo: &Repository,
    targets: &[(&Config, Target)],
    trigger: Trigger,
    options: &PushOptions,
) -> Result<ExitCode> {
    let mut runs: Vec<Run<'_>> = Vec::new();
    let mut begun = Ok(());
    for (config, target) in targets {
        match Run::begin(repo, config, target, trigger, options) {
            Ok(mut run) => {
                // The next app speaks for itself.
                run.session.hush();
                runs.push(run);
            }
            Err(err) => {
                begun = Err(err.context(format!(
                    "app `{}`",
                    config.app.as_deref().unwrap_or_default()
                )));
                break;
            }
        }
    }
    if let Err(err) = begun {
        // The apps that took their lock are recorded as not deployed; the error is the push's.
        output::error(format!("{err:#}"));
        for mut run in runs.into_iter().rev() {
            run.session.speak();
            if run.outcome.is_ok() {
                run.outcome = Err(Stop::Error(anyhow::anyhow!(
                    "another app of the push could not start"
                )));
            }
            run.finish()?;
        }
        return Ok(ExitCode::FAILURE);
    }

    // Every release is made and every app's steps pass before any app switches.
    let mut failed: Option<String> = None;
    for run in &mut runs {
        if failed.is_some() {
            break;
        }
        run.session.speak();
        run.prepare();
        if run.failed() {
            failed = run.config.app.clone();
        }
        run.session.hush();
    }
    // Then each goes live, while none failed.
    if failed.is_none() {
        for n in 0..runs.len() {
            let run = &mut runs[n];
            run.session.speak();
            run.go_live();
            let broke = run
                .failed()
                .then(|| run.config.app.clone().unwrap_or_default());
            run.session.hush();
            if let Some(broke) = broke {
                // What went live before it goes back, the last first.
                for before in runs[..n].iter_mut().rev().filter(|r| r.live) {
                    before.session.speak();
                    undo(before, &broke);
                    before.session.hush();
                }
                failed = Some(broke);
                break;
            }
        }
    }
    if let Some(by) = &failed {
        for run in runs.iter_mut().filter(|r| r.outcome.is_ok() && !r.live) {
            run.session.speak();
            hold(run, by);
            run.session.hush();
        }
    }

    let mut outcomes = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for mut run in runs {
        run.session.speak();
        let name = run.config.app.clone().unwrap_or_default();
        let commit = run.session.holder.commit.clone();
        let state = match &run.outcome {
            Ok(()) => State::Succeeded,
            Err(stop) => stop.describe().0,
        };
        if run.finish()? != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
        outcomes.push(match state {
            State::Succeeded => format!("{name} deployed {}", output::short(&commit)),
            State::Unchanged => format!("{name} unchanged"),
            other => format!("{name} {}", other.as_str()),
        });
    }
    let nothing = outcomes.iter().all(|o| o.ends_with(" unchanged"));
    let verdict = match &failed {
        None if nothing => "nothing to deploy",
        None if code == ExitCode::SUCCESS => "push deployed",
        None => "push FAILED",
        Some(_) => "push FAILED, nothing of it is live",
    };
    output::say(format!("{verdict}: {}", outcomes.join(", ")));
    Ok(code)
}

/// An app that went live, switched back because `by` failed after it.
fn undo(run: &mut Run<'_>, by: &str) {
    output::error(format!(
        "app `{by}` of this push failed once live: switching back"
    ));
    let restored = switch_back(run.config, &mut run.session);
    run.live = false;
    run.outcome = Err(super::back::after_switch(
        &format!("app {by}"),
        anyhow::anyhow!("app `{by}` of the same push failed"),
        restored,
        false,
    ));
}

/// An app that was ready but does not go live, because `by` failed: its migrations, if it ran
/// any, are reversed, so that the live release runs on the schema it knows.
fn hold(run: &mut Run<'_>, by: &str) {
    output::say(format!(
        "not switching: app `{by}` of this push failed, so no app of it goes live"
    ));
    if let Err(why) = super::back::reverse_held(run.config, &mut run.session) {
        output::warn(why);
    }
    run.outcome = Err(Stop::Held { by: by.to_string() });
}
