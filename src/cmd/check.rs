//! `ats-hook check`: validate the config and print the plan a push would run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Location;
use crate::config::Config;

pub fn run(location: &Location, out: &mut dyn Write) -> Result<ExitCode> {
    let config = super::load(location)?;
    write_plan(&config, out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn write_plan(config: &Config, out: &mut dyn Write) -> Result<()> {
    let deploy = &config.deploy;
    writeln!(out, "config {} is valid", config.path.display())?;
    writeln!(out, "deploys:   {}", config.describe_selection())?;
    writeln!(out, "root:      {}", deploy.root.display())?;
    writeln!(
        out,
        "releases:  keep {}; a push waits up to {} for another deploy",
        deploy.keep_releases, deploy.lock_timeout
    )?;
    if !config.shared.paths.is_empty() {
        let paths: Vec<String> = config.shared.paths.iter().map(|p| p.to_string()).collect();
        writeln!(out, "shared:    {}", paths.join(", "))?;
    }
    let keys: Vec<&str> = config.env.vars.keys().map(String::as_str).collect();
    if !keys.is_empty() {
        writeln!(out, "env:       {}", keys.join(", "))?;
    }
    if let Some(file) = config.env_file() {
        let state = if file.is_file() {
            "present"
        } else {
            "MISSING: deploys will fail until it exists"
        };
        writeln!(out, "env file:  {} ({state})", file.display())?;
    }
    let untracked = match deploy.untracked {
        crate::config::Untracked::Keep => "kept",
        crate::config::Untracked::Remove => "removed",
    };
    if deploy.recycle_releases {
        writeln!(out, "building:  from the release pruning would remove next (its untracked files {untracked}), else a full checkout")?;
    } else {
        writeln!(out, "building:  a full checkout for every release")?;
    }
    if config.steps.iter().any(|s| !s.inputs.is_empty())
        && deploy.untracked == crate::config::Untracked::Remove
    {
        writeln!(
            out,
            "note:      steps with `inputs` always run while `untracked = \"remove\"`"
        )?;
    }
    if config.steps_before_switch().next().is_none() {
        writeln!(out, "steps:     none")?;
    }
    for (n, step) in config.steps_before_switch().enumerate() {
        writeln!(
            out,
            "step {}:    {} (timeout {}): {}",
            n + 1,
            step.name,
            step.timeout,
            step.run
        )?;
        if !step.inputs.is_empty() {
            let inputs: Vec<String> = step.inputs.iter().map(|i| i.to_string()).collect();
            writeln!(
                out,
                "           skipped when unchanged: {}",
                inputs.join(", ")
            )?;
        }
    }
    writeln!(
        out,
        "switch:    {}/current -> releases/<id>",
        deploy.root.display()
    )?;
    let restart = &config.restart;
    if restart.is_empty() {
        writeln!(out, "restart:   nothing")?;
    }
    if let Some(touch) = &restart.touch {
        writeln!(out, "restart:   touch {touch}")?;
    }
    for unit in &restart.systemctl {
        let sudo = if restart.sudo { "sudo -n " } else { "" };
        writeln!(
            out,
            "restart:   {sudo}systemctl {} {unit}",
            restart.systemctl_action.as_str()
        )?;
    }
    if let Some(signal) = &restart.signal {
        writeln!(
            out,
            "restart:   send {} to the pid in {}",
            signal.signal,
            signal.pidfile.display()
        )?;
    }
    if let Some(command) = &restart.command {
        writeln!(out, "restart:   {command}")?;
    }
    if let Some(health) = &config.health {
        let probe = match (&health.url, &health.command) {
            (Some(url), _) => format!("GET {url}, expect {}", health.expect_status),
            (_, Some(command)) => command.clone(),
            (None, None) => String::new(),
        };
        let body = health
            .expect_body
            .as_ref()
            .map(|b| format!(" with `{b}` in the body"))
            .unwrap_or_default();
        writeln!(
            out,
            "health:    {probe}{body}, every {} for up to {}; on failure switch back",
            health.interval, health.timeout
        )?;
    }
    for step in config.steps_after_switch() {
        let on_failure = if step.rollback_on_failure {
            "switch back"
        } else {
            "keep the release"
        };
        writeln!(
            out,
            "after:     {} (timeout {}; on failure {on_failure}): {}",
            step.name, step.timeout, step.run
        )?;
    }
    Ok(())
}
