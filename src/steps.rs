//! The app's own steps (install, migrate, build …), run in the new release before it goes live.
//!
//! Each step is `sh -c <run>` from the config, in the release folder, with the deploy's
//! environment: the server's (without git's `GIT_*`), the `[env]` table, the env file, and the
//! `ATS_*` variables. Values that came with the push (ref names, commit data) reach a step only
//! through those variables, never through the command line.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{Config, Step};
use crate::output;
use crate::process::{Cmd, Exit};
use crate::record::{StepRecord, StepStatus};

/// What the deploy tells its steps about itself.
pub struct DeployVars<'a> {
    pub release_dir: &'a Path,
    pub release_id: &'a str,
    pub commit: &'a str,
    pub previous_commit: Option<&'a str>,
    pub git_ref: &'a str,
    pub deploy_root: &'a Path,
}

/// The variables every step and restart command gets on top of the server's environment.
pub fn environment(config: &Config, vars: &DeployVars<'_>) -> Result<BTreeMap<String, String>> {
    let mut env = config.env.vars.clone();
    if let Some(file) = config.env_file() {
        let entries = dotenvy::from_path_iter(&file)
            .with_context(|| format!("failed to read env file `{}`", file.display()))?;
        for entry in entries {
            let (key, value) =
                entry.with_context(|| format!("malformed env file `{}`", file.display()))?;
            env.insert(key, value);
        }
    }
    let ats = [
        (
            "ATS_RELEASE_DIR",
            vars.release_dir.to_string_lossy().into_owned(),
        ),
        ("ATS_RELEASE_ID", vars.release_id.to_string()),
        ("ATS_COMMIT", vars.commit.to_string()),
        (
            "ATS_PREVIOUS_COMMIT",
            vars.previous_commit.unwrap_or_default().to_string(),
        ),
        ("ATS_REF", vars.git_ref.to_string()),
        (
            "ATS_DEPLOY_ROOT",
            vars.deploy_root.to_string_lossy().into_owned(),
        ),
    ];
    for (key, value) in ats {
        env.insert(key.to_string(), value);
    }
    Ok(env)
}

/// What a step's declared inputs are at a commit: each path with the id of its blob or tree
/// (`-` when absent), so equal text means equal content. `None` for a step without inputs.
pub fn inputs_digest(tree: &git2::Tree<'_>, inputs: &[crate::config::RelPath]) -> Option<String> {
    if inputs.is_empty() {
        return None;
    }
    let parts: Vec<String> = inputs
        .iter()
        .map(|input| {
            let id = tree
                .get_path(input.as_path())
                .map(|e| e.id().to_string())
                .unwrap_or_else(|_| "-".into());
            format!("{input}@{id}")
        })
        .collect();
    Some(parts.join(" "))
}

/// The width step names are padded to, so output lines align.
pub fn prefix_width(config: &Config) -> usize {
    config
        .steps
        .iter()
        .map(|step| step.name.as_str().len())
        .chain(std::iter::once("restart".len()))
        .max()
        .unwrap_or(0)
}

/// Runs one step and says how it went.
pub fn run(
    step: &Step,
    dir: &Path,
    env: &BTreeMap<String, String>,
    width: usize,
) -> Result<(StepRecord, Exit)> {
    let name = step.name.as_str();
    let finished = Cmd::shell(&step.run)
        .dir(dir)
        .envs(env)
        .timeout(step.timeout.0)
        .stream(&mut |line| output::step_line(name, width, line))
        .with_context(|| format!("step `{name}` could not run"))?;
    let status = match finished.exit {
        Exit::Code(0) => StepStatus::Ok,
        Exit::TimedOut(_) => StepStatus::TimedOut,
        Exit::Interrupted => StepStatus::Interrupted,
        Exit::Code(_) | Exit::Signal(_) => StepStatus::Failed,
    };
    let took = output::seconds(finished.duration);
    if status == StepStatus::Ok {
        output::say(format!("{name} done in {took}"));
    } else {
        output::error(format!(
            "step `{name}` failed ({}) after {took}",
            finished.exit
        ));
    }
    let record = StepRecord {
        name: name.to_string(),
        status,
        exit_code: finished.exit.shell_code(),
        duration_ms: finished.duration.as_millis() as u64,
        inputs: None,
    };
    Ok((record, finished.exit))
}
