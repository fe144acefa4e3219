//! An app run by Docker Compose (`[compose]`): one project per deploy root, each release's
//! images tagged with the release, built before anything switches.
//!
//! ```text
//! <root>/.ats-hook/compose/<release>.yaml         the override: each built service's image is
//!                                                 `<project>-<service>:<release>`, its env file
//! <root>/.ats-hook/compose/<release>.env          the deploy's environment for the containers (0600)
//! <root>/.ats-hook/compose/<release>.images.json  service → image id, once built
//! ```
//!
//! Every Compose command ats-hook runs, and every step, gets `COMPOSE_PROJECT_NAME`,
//! `COMPOSE_FILE` (the release's files, then the override) and `COMPOSE_ENV_FILES`, so that
//! `docker compose run --rm web ./manage.py migrate` in a step addresses the new release's
//! images in the one project. Variables for the Compose file's `${…}`: ats-hook's environment
//! (`[env]`, the env file) first, then `compose.env_files`, as Compose ranks them. The
//! containers of `env_to` get the same environment the steps got, over their own `env_file:`
//! and under their `environment:`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::containers::remove_container;
use crate::config::{Address, Compose};
use crate::state::layout::Layout;
use crate::sys::files::write_atomically;
use crate::sys::output::{self, StepLines};
use crate::sys::process::Cmd;

/// The images a release built, service → image id, as recorded after its build.
pub fn images(layout: &Layout, release: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(layout.compose_file(release, "images.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The one project of a deploy root, for one release's files.
pub struct Project<'a> {
    pub compose: &'a Compose,
    layout: &'a Layout,
    pub name: String,
}

impl<'a> Project<'a> {
    pub fn new(compose: &'a Compose, layout: &'a Layout) -> Project<'a> {
        Project {
            compose,
            layout,
            name: compose.project_name(layout.root()),
        }
    }

    /// `docker compose <args>` for the release whose environment is `env` (it holds the
    /// `COMPOSE_*` variables), run in the deploy root.
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString>>(
        &self,
        env: &BTreeMap<String, String>,
        args: I,
    ) -> Cmd {
        Cmd::new("docker")
            .arg("compose")
            .args(args)
            .envs(env)
            .dir(self.layout.root())
    }

    /// Makes the release's images before anything switches: reads its Compose files (`docker
    /// compose config`, which also checks them), writes its override and env file, builds the
    /// services that build, and records their image ids. A failure changes nothing that runs.
    pub fn prepare(&self, release: &str, dir: &Path, env: &BTreeMap<String, String>) -> Result<()> {
        let model = self.model(dir, env)?;
        let built = built_services(&model);
        let web = self.compose.web.as_deref();
        if let Some(web) = web {
            if !services(&model).contains(web) {
                bail!("`compose.web` `{web}` is not a service of the Compose file");
            }
        }
        let env_to: BTreeSet<String> = match &self.compose.env_to {
            Some(names) => {
                for name in names {
                    if !services(&model).contains(name.as_str()) {
                        bail!("`compose.env_to` names `{name}`, which is not a service of the Compose file");
                    }
                }
                names.iter().cloned().collect()
            }
            None => built.iter().cloned().chain(web.map(String::from)).collect(),
        };
        std::fs::create_dir_all(self.dir())
            .with_context(|| format!("failed to create `{}`", self.dir().display()))?;
        let mut file = String::new();
        for (key, value) in env.iter().filter(|(key, _)| !key.starts_with("COMPOSE_")) {
            if !value.contains('\n') {
                file.push_str(&format!("{key}={}\n", crate::sys::files::quote_env(value)));
            }
        }
        write_atomically(
            &self.layout.compose_file(release, "env"),
            file.as_bytes(),
            0o600,
        )?;
        let mut services = serde_json::Map::new();
        for name in built.iter().chain(env_to.iter()) {
            let mut service = serde_json::Map::new();
            if built.contains(name) {
                service.insert("image".into(), json!(self.image(name, release)));
                service.insert("labels".into(), json!({ "ats-hook.release": release }));
            }
            if env_to.contains(name) {
                service.insert(
                    "env_file".into(),
                    json!([self
                        .layout
                        .compose_file(release, "env")
                        .display()
                        .to_string()]),
                );
            }
            services.insert(name.clone(), Value::Object(service));
        }
        let text = serde_json::to_string_pretty(&json!({ "services": services }))
            .context("failed to encode the Compose override")?;
        write_atomically(
            &self.layout.compose_file(release, "yaml"),
            text.as_bytes(),
            0o644,
        )?;

        if built.is_empty() {
            return Ok(());
        }
        let clock = Instant::now();
        let build = self
            .cmd(env, ["build"])
            .timeout(self.compose.build_timeout.0);
        shown("build", build, "build").context("nothing changed")?;
        let mut ids = BTreeMap::new();
        for name in &built {
            let tag = self.image(name, release);
            let id = Cmd::new("docker")
                .args(["image", "inspect", "--format", "{{.Id}}", &tag])
                .timeout(Duration::from_secs(30))
                .read()
                .with_context(|| format!("the build made no image `{tag}`"))?;
            ids.insert(name.clone(), id.trim().to_string());
        }
        let text = serde_json::to_string_pretty(&ids).context("failed to encode images")?;
        write_atomically(
            &self.layout.compose_file(release, "images.json"),
            text.as_bytes(),
            0o644,
        )?;
        output::say(format!(
            "compose: built {} in {}",
            ids.keys()
                .map(|name| format!("`{}`", self.image(name, release)))
                .collect::<Vec<_>>()
                .join(", "),
            output::seconds(clock.elapsed())
        ));
        Ok(())
    }

    /// `<project>-<service>:<release>`.
    pub fn image(&self, service: &str, release: &str) -> String {
        format!("{}-{service}:{release}", self.name)
    }

    fn dir(&self) -> PathBuf {
        self.layout.compose_dir()
    }

    /// The release's Compose model (`docker compose config`), without ats-hook's override.
    pub fn model(&self, dir: &Path, env: &BTreeMap<String, String>) -> Result<Value> {
        let files = crate::steps::compose_files(self.compose, dir);
        if files.is_empty() {
            bail!(
                "no Compose file in the release (`compose.yaml`, `docker-compose.yml`, …): commit one, or name it in `compose.files`"
            );
        }
        for file in &files {
            if !file.is_file() {
                bail!(
                    "the Compose file `{}` is not in the release",
                    file.display()
                );
            }
        }
        let mut cmd = self.cmd(env, ["config", "--format", "json"]);
        cmd = cmd.env(
            "COMPOSE_FILE",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        );
        let text = cmd
            .timeout(Duration::from_secs(60))
            .read()
            .context("the Compose file does not load")?;
        serde_json::from_str(&text).context("`docker compose config` printed no JSON")
    }

    /// Brings `services` (all when empty) to the release of `env`: `up -d --wait`, recreating
    /// what changed, removing services the release no longer has.
    pub fn up(&self, env: &BTreeMap<String, String>, services: &[String], how: Up) -> Result<()> {
        let wait = self.compose.wait.0.as_secs().max(1).to_string();
        let mut args: Vec<String> = vec![
            "up".into(),
            "--detach".into(),
            "--wait".into(),
            "--wait-timeout".into(),
            wait,
        ];
        match how {
            Up::Update => args.extend(["--remove-orphans".into(), "--no-deps".into()]),
            Up::Missing => args.push("--no-recreate".into()),
        }
        if !services.is_empty() {
            args.extend(services.iter().cloned());
        }
        let label = match how {
            Up::Update => "up",
            Up::Missing => "deps",
        };
        let up = self
            .cmd(env, &args)
            .timeout(self.compose.wait.0 + Duration::from_secs(60))
            // Half an `up` is worse than a whole one: it runs to its end (or its timeout).
            .uninterruptible();
        shown(label, up, &args.join(" "))
    }

    /// Every service but the web one, from the release's model.
    pub fn other_services(
        &self,
        dir: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        let model = self.model(dir, env)?;
        Ok(services(&model)
            .into_iter()
            .filter(|name| Some(name.as_str()) != self.compose.web.as_deref())
            .collect())
    }

    /// The web container of `slot`.
    pub fn container(&self, slot: &str) -> String {
        let web = self.compose.web.as_deref().unwrap_or("web");
        format!("{}-{web}-{slot}", self.name)
    }

    /// Starts the web service of the release of `env` on `slot`'s address: a container of the
    /// project (its network, volumes, env) publishing the web port there, and nothing else.
    pub fn start_web(
        &self,
        slot: (&str, &Address),
        release: &str,
        dir: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<String> {
        let web = self
            .compose
            .web
            .as_deref()
            .context("`compose.web` is not set")?;
        let port = match self.compose.port {
            Some(port) => port,
            None => web_port(&self.model(dir, env)?, web)?,
        };
        let Address::Tcp {
            host,
            port: published,
        } = slot.1
        else {
            bail!(
                "a container's port is published on a TCP address, not `{}`",
                slot.1
            );
        };
        // What the web service needs (its database, its cache) runs first; nothing running is
        // recreated before the new release is proven.
        let others = self.other_services(dir, env)?;
        if !others.is_empty() {
            self.up(env, &others, Up::Missing)?;
        }
        let name = self.container(slot.0);
        remove_container(&name)?;
        let publish = format!("{host}:{published}:{port}");
        let args = [
            "run",
            "--detach",
            "--no-deps",
            "--use-aliases",
            "--name",
            &name,
            "--publish",
            &publish,
            "--label",
            &format!("ats-hook.slot={}", slot.0),
            "--label",
            &format!("ats-hook.release={release}"),
            web,
        ];
        let run = self
            .cmd(env, args)
            .timeout(self.compose.wait.0 + Duration::from_secs(60));
        shown("run", run, &format!("run … {web}"))?;
        Ok(name)
    }

    /// The releases the project's running containers use: the one each runs (its label), and
    /// those whose folders they mount (a bind mount of `./config` is resolved once, at
    /// creation). Processes in a container are out of reach of the /proc scan.
    pub fn releases_in_use(&self) -> Result<BTreeSet<String>> {
        let ids = Cmd::new("docker")
            .args([
                "ps",
                "--quiet",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.name),
            ])
            .timeout(Duration::from_secs(30))
            .read()?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut used = BTreeSet::new();
        if ids.is_empty() {
            return Ok(used);
        }
        let text = Cmd::new("docker")
            .arg("inspect")
            .arg("--format")
            .arg(
                "{{index .Config.Labels \"ats-hook.release\"}}{{range .Mounts}} {{.Source}}{{end}}",
            )
            .args(ids)
            .timeout(Duration::from_secs(30))
            .read()?;
        let releases = self.layout.releases();
        let releases = releases.canonicalize().unwrap_or(releases);
        for line in text.lines() {
            let mut words = line.split(' ');
            if let Some(label) = words.next().filter(|l| !l.is_empty()) {
                used.insert(label.to_string());
            }
            for source in words {
                if let Ok(rest) = Path::new(source).strip_prefix(&releases) {
                    if let Some(first) = rest.components().next() {
                        used.insert(first.as_os_str().to_string_lossy().into_owned());
                    }
                }
            }
        }
        Ok(used)
    }

    /// Removes the images of releases that are gone (`<project>-*:<release>` of no kept
    /// release), and the release's files. Never an image a kept release names.
    pub fn prune(&self, kept: &BTreeSet<String>) -> Result<Vec<String>> {
        let text = Cmd::new("docker")
            .args([
                "image",
                "ls",
                "--filter",
                &format!("reference={}-*", self.name),
                "--format",
                "{{.Repository}}:{{.Tag}}",
            ])
            .timeout(Duration::from_secs(30))
            .read()?;
        let mut removed = Vec::new();
        for image in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some((_, tag)) = image.rsplit_once(':') else {
                continue;
            };
            // Only the tags ats-hook makes: a release id (`<time>-<sha>`).
            if kept.contains(tag)
                || !tag.contains('-')
                || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                continue;
            }
            let done = Cmd::new("docker")
                .args(["image", "rm", image])
                .timeout(Duration::from_secs(60))
                .read();
            match done {
                Ok(_) => removed.push(image.to_string()),
                Err(err) => output::warn(format!("could not remove the image `{image}`: {err:#}")),
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let release = name.split('.').next().unwrap_or_default();
                if !kept.contains(release) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(removed)
    }
}

/// Runs a Compose command, its output shown under `label` like a step's; fails with the
/// command (`docker compose <what>`), its exit and its last line.
fn shown(label: &str, cmd: Cmd, what: &str) -> Result<()> {
    let mut lines = StepLines::new(label, 0);
    let finished = cmd.stream(&mut |line| lines.line(line));
    lines.finish();
    let finished = finished?;
    if !finished.exit.success() {
        bail!(
            "`docker compose {what}` failed ({}){}",
            finished.exit,
            finished
                .tail
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// How `up` treats what runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// Recreates what changed, removes services that are gone.
    Update,
    /// Starts what does not run yet (the web service's dependencies), recreating nothing.
    Missing,
}

fn services(model: &Value) -> BTreeSet<String> {
    model["services"]
        .as_object()
        .map(|services| services.keys().cloned().collect())
        .unwrap_or_default()
}

fn built_services(model: &Value) -> BTreeSet<String> {
    model["services"]
        .as_object()
        .map(|services| {
            services
                .iter()
                .filter(|(_, service)| service.get("build").is_some())
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The port the web service listens on in its container: the one its `ports` or `expose` names.
fn web_port(model: &Value, web: &str) -> Result<u16> {
    let service = &model["services"][web];
    let mut ports: BTreeSet<u16> = BTreeSet::new();
    for port in service["ports"].as_array().into_iter().flatten() {
        if let Some(target) = port["target"].as_u64() {
            ports.insert(target as u16);
        }
    }
    for port in service["expose"].as_array().into_iter().flatten() {
        let text = match port {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if let Ok(port) = text.split('/').next().unwrap_or_default().parse() {
            ports.insert(port);
        }
    }
    match ports.len() {
        1 => Ok(ports.into_iter().next().unwrap_or_default()),
        0 => bail!("the service `{web}` names no port (`ports` or `expose`): set `compose.port` to the port it listens on in its container"),
        _ => bail!("the service `{web}` names several ports: set `compose.port` to the one that takes web traffic"),
    }
}
