//! The plan a push would run, as `check` and a dry-run deploy print it: the config read back
//! in words, and for each step with outputs the key a deploy would have and whether its build
//! is stored.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Result;
use git2::Repository;

use crate::config::{Config, RestartEnv};
use crate::outputs::{self, Key, Store};
use crate::release;
use crate::state::layout::Layout;
use crate::state::lock;
use crate::state::push_options::PushOptions;
use crate::state::refs::short_ref;
use crate::state::select::Target;
use crate::sys::output::short;

/// For each step with outputs: the key a deploy of `commit` would have, and whether it would
/// reuse a stored build or build one.
pub fn write_outputs_plan(
    config: &Config,
    repo: &git2::Repository,
    commit: git2::Oid,
    git_ref: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let layout = Layout::new(&config.deploy.root);
    let store = Store::new(&layout);
    let tree = crate::release::view::View::of(&config.deploy).tree(repo, commit)?;
    let dir = if layout.current().is_dir() {
        layout.current()
    } else {
        layout.root().to_path_buf()
    };
    let env = crate::steps::environment(
        config,
        &crate::steps::DeployVars {
            release_dir: &dir,
            release_id: "",
            commit: &commit.to_string(),
            previous_commit: None,
            git_ref,
            deploy_root: layout.root(),
        },
    )
    .unwrap_or_default();
    let at = format!("{} ({})", short(&commit.to_string()), short_ref(git_ref));
    for step in config.steps.iter().filter(|step| step.has_outputs()) {
        let key_output = match &step.key {
            None => None,
            Some(command) => match outputs::run_key_command(command, &dir, &env, step.timeout.0)? {
                Ok(text) => Some(text),
                Err((exit, _)) => {
                    writeln!(
                            out,
                            "outputs:   {}: its key command `{command}` fails ({exit}): deploys would fail",
                            step.name
                        )?;
                    continue;
                }
            },
        };
        let key = Key::of(step, &tree, key_output);
        let missing: Vec<String> = outputs::missing_inputs(step, &tree)
            .iter()
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            writeln!(
                out,
                "outputs:   {}: not in {at}, so keyed as absent: {}",
                step.name,
                missing.join(", ")
            )?;
        }
        match store.find(step, &key)? {
            Some(build) => writeln!(
                out,
                "outputs:   {}: at {at}, key {}: reused from build {}",
                step.name,
                key.short(),
                build.build
            )?,
            None => writeln!(
                out,
                "outputs:   {}: at {at}, key {}: not stored, the next deploy builds it",
                step.name,
                key.short()
            )?,
        }
    }
    Ok(())
}

pub fn write_plan(config: &Config, out: &mut dyn Write) -> Result<()> {
    let deploy = &config.deploy;
    writeln!(out, "config {} is valid", config.path.display())?;
    writeln!(out, "deploys:   {}", config.describe_selection())?;
    writeln!(out, "root:      {}", deploy.root.display())?;
    let view = crate::release::view::View::of(deploy);
    if let Some(path) = &view.path {
        let with: Vec<String> = view.paths.iter().map(|p| format!("`{p}`")).collect();
        writeln!(
            out,
            "app:       the folder `{path}` is each release's root{}; a push that leaves {} unchanged deploys nothing (`-o ats.force` deploys anyway)",
            if with.is_empty() {
                String::new()
            } else {
                format!(", with {} at {}", with.join(", "), if with.len() == 1 { "its own path" } else { "their own paths" })
            },
            if with.is_empty() { "it" } else { "them" }
        )?;
    }
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
    let releases = Layout::new(&deploy.root).releases();
    let on_btrfs = releases
        .ancestors()
        .find(|dir| dir.exists())
        .is_some_and(crate::release::snapshot::on_btrfs);
    if deploy.recycle_releases && deploy.snapshot_releases && on_btrfs {
        writeln!(
            out,
            "building:  from the release pruning would remove next, else a snapshot of the live release (releases are btrfs subvolumes), else a full checkout"
        )?;
    } else if deploy.recycle_releases {
        writeln!(
            out,
            "building:  from the release pruning would remove next, else a full checkout"
        )?;
    } else {
        writeln!(out, "building:  a full checkout for every release")?;
    }
    if config.deploy.confine_steps {
        writeln!(
            out,
            "confined:  steps run in bubblewrap: they write only their release, its builds and the shared paths, and see no home, repository or other release"
        )?;
    }
    if let Some(compose) = &config.compose {
        write_compose(config, compose, out)?;
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
        if names_current(&step.run) {
            writeln!(
                out,
                "           it names `current`, which is the live (old) release until the switch: steps run in the new release's folder, so use relative paths or $ATS_RELEASE_DIR"
            )?;
        }
        if step.skippable {
            writeln!(
                out,
                "           a push may skip it: `git push -o ats.skip={}`",
                step.name
            )?;
        }
        if !step.migrations.is_empty() {
            let paths: Vec<String> = step.migrations.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "           its migrations ({}) are each release's schema; {}",
                paths.join(", "),
                if step.down.is_some() {
                    "`down` reverses them before old code goes back"
                } else {
                    "no `down`: old code never goes back onto a newer schema without `rollback --force`"
                }
            )?;
        }
        if step.has_outputs() {
            let paths: Vec<String> = step.outputs.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "           builds {}, stored under a key of its command and {}; reused while it holds",
                paths.join(", "),
                outputs::describe_key(step)
            )?;
        }
    }
    if deploy.revision_file {
        writeln!(out, "revision:  each release holds its commit in REVISION")?;
    }
    match (&config.serve, &config.health) {
        (Some(serve), Some(health)) => write_handover(config, serve, health, out)?,
        _ => write_restart_model(config, out)?,
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

/// The older model: switch `current`, restart in place, then check.
fn write_restart_model(config: &Config, out: &mut dyn Write) -> Result<()> {
    let deploy = &config.deploy;
    writeln!(
        out,
        "model:     switch, then restart in place: users meet the new release before the health check does, and a stop-then-start restart drops requests; `[serve]` hands over without either"
    )?;
    writeln!(
        out,
        "switch:    {}/current -> releases/<id>",
        deploy.root.display()
    )?;
    if config.compose.is_some() {
        writeln!(
            out,
            "compose:   `up --wait --remove-orphans`: every service that changed is recreated in place (stopped, then started: requests fail meanwhile); `[serve]` with `compose.web` hands the web service over without that"
        )?;
    }
    write_restart_model_actions(config, out)?;
    if let Some(health) = &config.health {
        let (probe, body) = describe_probe(health);
        writeln!(
            out,
            "health:    {probe}{body}, {} in a row, every {} for up to {}; on failure switch back",
            health.passes, health.interval, health.timeout
        )?;
        writeln!(
            out,
            "           first waits up to {} for the previous release's processes to go",
            health.settle
        )?;
    }
    Ok(())
}

/// The restart actions, in their order.
fn write_restart_model_actions(config: &Config, out: &mut dyn Write) -> Result<()> {
    let deploy = &config.deploy;
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
        if let Some(start) = &restart.start {
            writeln!(out, "           when none runs there, start: {start}")?;
        }
    }
    if let Some(command) = &restart.command {
        writeln!(out, "restart:   {command}")?;
    }
    if restart.start.is_some() || restart.command.is_some() {
        let env = match restart.env {
            RestartEnv::Deploy => "the deploy's environment ([env], env file, ATS_*)",
            RestartEnv::Clean => "a clean environment (PATH, HOME, USER, LANG…)",
        };
        writeln!(
            out,
            "           commands run in {} with {env}",
            deploy.root.display()
        )?;
    }
    Ok(())
}

/// A health probe as the plan names it: what it asks, and what the body must hold.
fn describe_probe(health: &crate::config::Health) -> (String, String) {
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
    (probe, body)
}

/// The handover: which slot, which probe, which switch.
fn write_handover(
    config: &Config,
    serve: &crate::config::Serve,
    health: &crate::config::Health,
    out: &mut dyn Write,
) -> Result<()> {
    let [a, b] = [&serve.slots[0], &serve.slots[1]];
    writeln!(
        out,
        "model:     handover: the new release starts on the slot that takes no traffic, is proven there, then the proxy switches"
    )?;
    writeln!(out, "slots:     a {a}, b {b}")?;
    match (&serve.unit, &serve.start) {
        _ if serve.compose.is_some() => {
            let compose = serve.compose.as_ref().expect("checked");
            let web = compose.web.as_deref().unwrap_or_default();
            let project = compose.project_name(&config.deploy.root);
            writeln!(
                out,
                "start:     the container `{project}-{web}-<slot>` of `{web}` (`docker compose run --detach --no-deps`), publishing the slot's address to its port {}; its dependencies first (`up --no-recreate`)",
                compose
                    .port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "(the one its `ports` or `expose` names)".into())
            )?
        }
        (Some(unit), _) => writeln!(
            out,
            "start:     {}systemctl start {} (slot a) or {}, reading {}/.ats-hook/slots/<slot>.env",
            if serve.sudo { "sudo -n " } else { "" },
            unit.replace("@.service", "@a.service"),
            unit.replace("@.service", "@b.service"),
            config.deploy.root.display()
        )?,
        (None, Some(start)) => writeln!(
            out,
            "start:     {start}\n           in the release's folder, detached, its output in .ats-hook/slots/<slot>.log"
        )?,
        (None, None) => {}
    }
    let (probe, body) = describe_probe(health);
    writeln!(
        out,
        "health:    on the new slot: {probe}{body}, {} in a row, every {} for up to {}; on failure stop it (users saw nothing)",
        health.passes, health.interval, health.timeout
    )?;
    match (&serve.proxy.nginx, &serve.proxy.command) {
        (Some(file), _) => writeln!(
            out,
            "switch:    write `server <slot>;` to {}, `{}`, `{}`; then {}/current -> releases/<id>",
            file.display(),
            serve.proxy.test,
            serve.proxy.reload,
            config.deploy.root.display()
        )?,
        (None, Some(command)) => writeln!(
            out,
            "switch:    `{command}`; then {}/current -> releases/<id>",
            config.deploy.root.display()
        )?,
        (None, None) => {}
    }
    if let Some(admin) = &serve.proxy.caddy {
        writeln!(
            out,
            "switch:    PATCH {}/upstreams to the new slot (Caddy's admin API); then {}/current -> releases/<id>",
            admin.trim_end_matches('/'),
            config.deploy.root.display()
        )?;
    }
    writeln!(
        out,
        "proxy:     GET {}, like the health check; on failure the proxy goes back to the old slot",
        serve.proxy.url
    )?;
    if !health
        .expect_body
        .as_deref()
        .unwrap_or_default()
        .contains("commit}")
    {
        writeln!(
            out,
            "           without `{{commit}}` in `health.expect_body` this probe cannot tell the new release from the old"
        )?;
    }
    writeln!(
        out,
        "drain:     the old slot keeps its open connections up to {}, then stops (TERM, KILL after {})",
        serve.drain, serve.stop_timeout
    )?;
    for worker in &serve.workers {
        let how = match (&worker.start, &worker.unit) {
            (Some(start), _) => format!("`{start}`"),
            (None, Some(unit)) => format!("systemctl restart {unit}"),
            (None, None) => String::new(),
        };
        let order = if worker.singleton {
            "a singleton: stopped before its successor starts"
        } else {
            "its successor starts first"
        };
        writeln!(
            out,
            "worker:    {} from the new release once it serves: {how}; TERM, then {} for its task, then KILL; {order}",
            worker.name,
            worker.stop_timeout.unwrap_or(serve.stop_timeout)
        )?;
    }
    if serve.compose.is_some() {
        writeln!(
            out,
            "compose:   then the other services from the new release: `up --wait --remove-orphans` (what changed is recreated, what it dropped removed)"
        )?;
    }
    if !config.restart.is_empty() {
        writeln!(out, "restart:   once the new release serves:")?;
        write_restart_model_actions(config, out)?;
    }
    Ok(())
}

/// `deploy --dry-run`: what a deploy of `target` would do, changing nothing.
pub fn dry_run(
    repo: &Repository,
    config: &Config,
    target: &Target,
    options: &PushOptions,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let layout = Layout::new(&config.deploy.root);
    let live = layout.live_release()?;
    let id = release::new_id(&layout, target.commit, SystemTime::now());
    let view = release::view::View::of(&config.deploy);
    if let Some(live) = live.as_deref().filter(|live| {
        !options.force && release::holds_already(repo, &layout, live, &view, target.commit)
    }) {
        writeln!(
            out,
            "would deploy nothing: {} unchanged at {}; {live} stays live (`-o ats.force` deploys anyway)",
            view.folders(),
            short(&target.commit.to_string())
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "would deploy {} ({}) as {}",
        short(&target.commit.to_string()),
        short_ref(&target.git_ref),
        layout.release(&id).display()
    )?;
    writeln!(out, "live now:  {}", live.as_deref().unwrap_or("nothing"))?;
    if let Some(lock) = lock::current_holder(&layout.lock_file())? {
        writeln!(out, "lock:      held by {lock}; the deploy would wait")?;
    }
    write_plan(config, out)?;
    crate::pipeline::plan::write_outputs_plan(config, repo, target.commit, &target.git_ref, out)?;
    for step in &options.skip {
        writeln!(out, "skipped:   step {step}, as asked")?;
    }
    if options.no_restart {
        writeln!(out, "restart:   skipped, as asked")?;
    }
    if let Some(note) = &options.note {
        writeln!(out, "note:      {note}")?;
    }
    Ok(())
}

/// What a Compose app's deploy does before its steps.
fn write_compose(
    config: &Config,
    compose: &crate::config::Compose,
    out: &mut dyn Write,
) -> Result<()> {
    let project = compose.project_name(&config.deploy.root);
    let files: Vec<String> = compose.files.iter().map(ToString::to_string).collect();
    let files = if files.is_empty() {
        "the one Compose finds (`compose.yaml`, `docker-compose.yml`, …)".to_string()
    } else {
        files.join(", ")
    };
    writeln!(
        out,
        "compose:   project `{project}`, files {files}, then ats-hook's override per release"
    )?;
    if !compose.env_files.is_empty() {
        let env_files: Vec<String> = compose.env_files.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "           `${{…}}` from ats-hook's environment, then {}",
            env_files.join(", ")
        )?;
    }
    writeln!(
        out,
        "build:     `docker compose build` before the steps; each built image is `{project}-<service>:<release>`, kept while its release is"
    )?;
    let env_to = match &compose.env_to {
        Some(names) => names.join(", "),
        None => {
            "the services the release builds".to_string()
                + if compose.web.is_some() {
                    " and the web service"
                } else {
                    ""
                }
        }
    };
    writeln!(
        out,
        "           the deploy's environment reaches {env_to}; steps get COMPOSE_PROJECT_NAME and COMPOSE_FILE (`docker compose run --rm <service> …` runs the new image)"
    )?;
    Ok(())
}

/// Whether a step's command changes into, or reads through, `current`.
fn names_current(run: &str) -> bool {
    run.split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|' || c == '(')
        .any(|word| {
            let word = word.trim_matches(|c| c == '"' || c == '\'');
            word == "current"
                || word.starts_with("current/")
                || word.ends_with("/current")
                || word.contains("/current/")
                || word.contains("$ATS_DEPLOY_ROOT/current")
        })
}

#[cfg(test)]
mod compose_tests {
    #[test]
    fn a_step_that_names_current_is_noticed() {
        for run in [
            "cd current && make",
            "cd ../../current; ls",
            "cat \"$ATS_DEPLOY_ROOT/current/x\"",
            "ls /srv/app/current/",
        ] {
            assert!(super::names_current(run), "{run}");
        }
        for run in [
            "make current-version",
            "echo concurrent",
            "python3 manage.py migrate",
        ] {
            assert!(!super::names_current(run), "{run}");
        }
    }
}
