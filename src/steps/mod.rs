//! The app's own steps (install, migrate, build …), run in the new release before it goes live.
//!
//! Each step is `sh -c <run>` from the config, in the release folder, with the deploy's
//! environment: the server's (without git's `GIT_*`), the `[env]` table, the env file, and the
//! `ATS_*` variables. Values that came with the push (ref names, commit data) reach a step only
//! through those variables, never through the command line.
//!
//! A step that declares `outputs` goes through the output store instead: when its key was
//! built before, the release links to that build and the step does not run; otherwise it runs
//! in a new build folder, where its outputs stay (see `outputs`).
//!
//! This part also holds the sandbox a step may run in (`confine`) and what a release's migrations
//! are (`schema`). Uses `outputs`, `release`, `state`, `config` and `sys`.

pub mod confine;
pub mod schema;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::config::{Config, Step};
use crate::outputs::{self, Build, Key, Store};
use crate::state::layout::Layout;
use crate::state::push_options::PushOptions;
use crate::state::record::{StepOutput, StepRecord, StepStatus};
use crate::steps::confine::Sandbox;
use crate::sys::output::{self, seconds};
use crate::sys::process::{self, Cmd, Exit};

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
        env.extend(read_env_file(&file)?);
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
    if let Some(compose) = &config.compose {
        env.extend(compose_variables(
            compose,
            &Layout::new(vars.deploy_root),
            vars.release_id,
            vars.release_dir,
        ));
    }
    Ok(env)
}

/// The file names Compose looks for, in its order.
const COMPOSE_DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// With `[compose]`, what every step and Compose command of `release` (its folder `dir`) gets:
/// the project, its files (the release's, then ats-hook's override) and its env files, so that
/// `docker compose run --rm web …` in a step runs the new release's image in the one project.
pub fn compose_variables(
    compose: &crate::config::Compose,
    layout: &Layout,
    release: &str,
    dir: &Path,
) -> Vec<(String, String)> {
    let mut files: Vec<String> = compose_files(compose, dir)
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    files.push(layout.compose_file(release, "yaml").display().to_string());
    let mut vars = vec![
        (
            "COMPOSE_PROJECT_NAME".to_string(),
            compose.project_name(layout.root()),
        ),
        ("COMPOSE_FILE".to_string(), files.join(":")),
    ];
    if !compose.env_files.is_empty() {
        let env_files: Vec<String> = compose
            .env_files
            .iter()
            .map(|f| dir.join(f.as_path()).display().to_string())
            .collect();
        vars.push(("COMPOSE_ENV_FILES".to_string(), env_files.join(",")));
    }
    vars
}

/// The release's own Compose files, as absolute paths: those `compose.files` names, else the
/// first Compose finds by itself.
pub fn compose_files(compose: &crate::config::Compose, dir: &Path) -> Vec<std::path::PathBuf> {
    if !compose.files.is_empty() {
        return compose
            .files
            .iter()
            .map(|f| dir.join(f.as_path()))
            .collect();
    }
    COMPOSE_DEFAULT_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .into_iter()
        .collect()
}

/// The environment of steps and restart commands for one release.
pub fn release_environment(
    config: &Config,
    layout: &Layout,
    release: &str,
    commit: &str,
    previous_commit: Option<&str>,
    git_ref: &str,
) -> Result<BTreeMap<String, String>> {
    environment(
        config,
        &DeployVars {
            release_dir: &layout.release(release),
            release_id: release,
            commit,
            previous_commit,
            git_ref,
            deploy_root: layout.root(),
        },
    )
}

/// The environment of `release` as the deploy that made it live had it (its commit and ref
/// from the history), for starting it again: put back after a failure, or after a boot.
pub fn live_release_environment(
    config: &Config,
    layout: &Layout,
    records: &[crate::state::record::DeployRecord],
    release: &str,
) -> Result<(String, BTreeMap<String, String>)> {
    let made = crate::state::record::live_record(records, release);
    let commit = made.map(|r| r.commit.clone()).unwrap_or_default();
    let git_ref = made.map(|r| r.git_ref.clone()).unwrap_or_default();
    let env = release_environment(config, layout, release, &commit, None, &git_ref)?;
    Ok((commit, env))
}

/// The KEY=VALUE lines of an env file, in order; a malformed one is reported by its line only.
pub fn read_env_file(file: &Path) -> Result<Vec<(String, String)>> {
    let entries = dotenvy::from_path_iter(file)
        .with_context(|| format!("failed to read env file `{}`", file.display()))?;
    entries
        .map(|entry| entry.map_err(|err| malformed_env_file(file, err)))
        .collect()
}

/// What a malformed env file gets said: its path and the line, never its text (dotenvy's
/// message carries the line, and with an open quote the rest of the file: secrets).
fn malformed_env_file(file: &Path, err: dotenvy::Error) -> anyhow::Error {
    match err {
        dotenvy::Error::LineParse(text, _) => {
            let first = text.lines().next().unwrap_or_default();
            let line = std::fs::read_to_string(file)
                .ok()
                .and_then(|content| {
                    content
                        .lines()
                        .position(|line| line.trim_end_matches('\r') == first)
                })
                .map_or_else(String::new, |n| format!(" at line {}", n + 1));
            anyhow::anyhow!(
                "malformed env file `{}`{line}: not a KEY=VALUE line, or a quote left open (its text is not shown: it may hold a secret)",
                file.display()
            )
        }
        err => {
            anyhow::Error::new(err).context(format!("failed to read env file `{}`", file.display()))
        }
    }
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
    sandbox: Option<&Sandbox>,
) -> Result<(StepRecord, Exit)> {
    let name = step.name.as_str();
    let command = match sandbox {
        Some(sandbox) => sandbox.shell(&step.run, dir)?,
        None => Cmd::shell(&step.run).dir(dir),
    };
    let mut lines = output::StepLines::new(name, width);
    let finished = command
        .envs(env)
        .timeout(step.timeout.0)
        .stream(&mut |line| lines.line(line));
    lines.finish();
    let finished = finished.with_context(|| format!("step `{name}` could not run"))?;
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
        output::warn_if_disk_full(dir);
    }
    let record = StepRecord {
        name: name.to_string(),
        status,
        exit_code: finished.exit.shell_code(),
        duration_ms: finished.duration.as_millis() as u64,
        inputs: None,
        output: None,
    };
    Ok((record, finished.exit))
}

/// The record of a step the push asked to skip (`ats.skip`), which it says.
pub fn skipped(step: &Step) -> StepRecord {
    output::say(format!(
        "{}: skipped, as the push asked (`ats.skip={}`)",
        step.name, step.name
    ));
    StepRecord {
        name: step.name.to_string(),
        status: StepStatus::Skipped,
        exit_code: None,
        duration_ms: 0,
        inputs: None,
        output: None,
    }
}

/// Why the steps before the switch stopped short.
pub enum Stopped {
    Failed { name: String, exit: Exit },
    Interrupted { before: String },
}

/// One deploy's steps before the switch: where they run and what they record.
pub struct BeforeSwitch<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub release_id: &'a str,
    pub release_dir: &'a Path,
    pub tree: &'a git2::Tree<'a>,
    pub env: &'a BTreeMap<String, String>,
    /// What the push asked for: steps to skip.
    pub options: &'a PushOptions,
    /// Where the steps run, when the config confines them.
    pub sandbox: Option<Sandbox>,
    /// Each step's record, in order.
    pub records: Vec<StepRecord>,
    /// Each step's time, for the summary line.
    pub timings: Vec<(String, Duration)>,
}

impl BeforeSwitch<'_> {
    /// Runs the steps in order, until one fails or ats-hook is asked to stop.
    pub fn run(&mut self) -> Result<Option<Stopped>> {
        let width = prefix_width(self.config);
        for step in self.config.steps_before_switch() {
            if process::stop_requested() {
                return Ok(Some(Stopped::Interrupted {
                    before: step.name.to_string(),
                }));
            }
            if self.options.skips(step.name.as_str()) {
                self.records.push(skipped(step));
                continue;
            }
            let (record, exit) = if step.has_outputs() {
                self.build_or_reuse(step, width)?
            } else {
                run(
                    step,
                    self.release_dir,
                    self.env,
                    width,
                    self.sandbox.as_ref(),
                )?
            };
            self.timings.push((
                step.name.to_string(),
                Duration::from_millis(record.duration_ms),
            ));
            self.records.push(record);
            if !exit.success() {
                return Ok(Some(Stopped::Failed {
                    name: step.name.to_string(),
                    exit,
                }));
            }
        }
        Ok(None)
    }

    /// A step with outputs: links the build of its key into the release, building it first
    /// when there is none.
    fn build_or_reuse(&self, step: &Step, width: usize) -> Result<(StepRecord, Exit)> {
        let name = step.name.as_str();
        let started = Instant::now();
        let key_output = match &step.key {
            None => None,
            Some(command) => {
                match outputs::run_key_command(command, self.release_dir, self.env, step.timeout.0)?
                {
                    Ok(text) => Some(text),
                    Err((exit, tail)) => {
                        for line in &tail {
                            output::step_line(name, width, line);
                        }
                        output::error(format!(
                            "step `{name}`: its key command `{command}` failed ({exit})"
                        ));
                        return Ok((failed_record(name, exit, started.elapsed()), exit));
                    }
                }
            }
        };
        let key = Key::of(step, self.tree, key_output);
        let paths: Vec<String> = step.outputs.iter().map(ToString::to_string).collect();
        if let Some(build) = self.store.find(step, &key)? {
            for note in self.store.link(&build, self.release_dir)? {
                output::say(note);
            }
            output::say(format!(
                "{name}: reused {} ({} unchanged since {})",
                paths.join(", "),
                outputs::describe_key(step),
                build.build
            ));
            let record = StepRecord {
                name: name.to_string(),
                status: StepStatus::Reused,
                exit_code: None,
                duration_ms: started.elapsed().as_millis() as u64,
                inputs: key.inputs,
                output: Some(StepOutput {
                    key: key.digest,
                    build: build.build,
                    paths,
                }),
            };
            return Ok((record, Exit::Code(0)));
        }

        output::say(format!(
            "{name}: building {} (key {}: {} not built before)",
            paths.join(", "),
            key.short(),
            outputs::describe_key(step)
        ));
        let workspace = self
            .store
            .prepare(step, self.release_id, self.release_dir)?;
        let (mut record, exit) = run(step, &workspace.dir, self.env, width, self.sandbox.as_ref())?;
        record.inputs = key.inputs.clone();
        if !exit.success() {
            self.store.discard(workspace);
            return Ok((record, exit));
        }
        let build = Build {
            step: name.to_string(),
            key: key.digest.clone(),
            build: self.release_id.to_string(),
            outputs: paths.clone(),
            inputs: key.inputs,
            key_output: key.key_output,
            run: step.run.clone(),
            built_at: output::rfc3339(SystemTime::now()),
            duration_ms: record.duration_ms,
        };
        let strays = self
            .store
            .finish(workspace, &build)
            .with_context(|| format!("step `{name}` cannot be stored"))?;
        if !strays.is_empty() {
            output::say(format!(
                "{name}: removed what it wrote beside its outputs: {}",
                strays.join(", ")
            ));
        }
        for note in self.store.link(&build, self.release_dir)? {
            output::say(note);
        }
        output::say(format!(
            "{name}: stored {} as build {} in {}",
            paths.join(", "),
            build.build,
            seconds(started.elapsed())
        ));
        record.duration_ms = started.elapsed().as_millis() as u64;
        record.output = Some(StepOutput {
            key: build.key,
            build: build.build,
            paths,
        });
        Ok((record, exit))
    }
}

fn failed_record(name: &str, exit: Exit, took: Duration) -> StepRecord {
    StepRecord {
        name: name.to_string(),
        status: StepStatus::Failed,
        exit_code: exit.shell_code(),
        duration_ms: took.as_millis() as u64,
        inputs: None,
        output: None,
    }
}
