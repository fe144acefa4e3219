//! Scheduled jobs that belong to the release.
//!
//! A release declares its jobs in its `schedule.toml`. When it goes live (a deploy, a rollback,
//! a switch back), its jobs become the installed ones, whole: with systemd a `.timer` and a
//! `.service` per job, with cron a block of the deploy user's crontab that ats-hook owns; jobs
//! the release no longer has are removed. What is installed names only the job and its
//! schedule: each run is `ats-hook run-job NAME`, which finds the live release when it starts
//! and runs that release's command (`run`), so a timer left over by a failure never runs a
//! command the live release does not have.
//!
//! `.ats-hook/jobs/installed.json` remembers what was installed, for `jobs`, `status` and the
//! next install (which removes what is no longer wanted).

mod cron;
pub mod history;
pub mod run;
mod timers;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Installer, Schedule};
use crate::state::layout::Layout;
use crate::sys::output;

/// What was installed, and by what.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Installed {
    /// `systemd`, `systemd-user` or `cron`; empty when nothing was ever installed.
    pub installer: String,
    /// The release whose jobs these are.
    pub release: Option<String>,
    pub jobs: Vec<InstalledJob>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledJob {
    pub name: String,
    pub schedule: String,
    /// The systemd unit's name without `.timer`, or empty under cron.
    #[serde(default)]
    pub unit: String,
}

impl Installed {
    pub fn read(layout: &Layout) -> Result<Installed> {
        let path = installed_file(layout);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("failed to read `{}`", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Installed::default()),
            Err(err) => Err(err).with_context(|| format!("failed to read `{}`", path.display())),
        }
    }

    fn write(&self, layout: &Layout) -> Result<()> {
        let path = installed_file(layout);
        let json =
            serde_json::to_vec_pretty(self).context("failed to encode the installed jobs")?;
        crate::sys::files::write_atomically(&path, &json, 0o600)
    }
}

fn installed_file(layout: &Layout) -> PathBuf {
    layout.jobs_dir().join("installed.json")
}

/// The prefix of every unit and crontab block of this deploy root: `ats-hook-<folder name>`.
pub fn unit_prefix(layout: &Layout) -> String {
    let name = layout
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into());
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("ats-hook-{name}")
}

/// The release's jobs, checked: what a push is refused over before anything switches.
pub fn schedule_of(config: &Config, release_dir: &Path) -> Result<Schedule> {
    Schedule::of_release(&config.jobs, release_dir)
}

/// Whether going live with `release` has jobs to install or remove.
pub fn concerned(config: &Config, layout: &Layout, release: &str) -> bool {
    layout
        .release(release)
        .join(config.jobs.file.as_path())
        .exists()
        || installed_file(layout).exists()
            && Installed::read(layout).map_or(true, |installed| !installed.jobs.is_empty())
}

/// How a run is started: this binary with the config, from the deploy root.
struct Launcher {
    exe: PathBuf,
    config: PathBuf,
    /// `--app NAME`, for an app among others in its config file.
    app_args: Vec<String>,
    root: PathBuf,
}

impl Launcher {
    fn new(config: &Config, layout: &Layout) -> Result<Launcher> {
        let exe = std::env::current_exe().context("failed to find the ats-hook binary")?;
        let config_path = std::fs::canonicalize(&config.path)
            .with_context(|| format!("failed to find config `{}`", config.path.display()))?;
        Ok(Launcher {
            exe,
            config: config_path,
            app_args: config.app_args(),
            root: layout.root().to_path_buf(),
        })
    }
}

/// Makes the jobs of `release` (none, without one) the installed jobs. Nothing is changed when
/// they are installed already.
pub fn install(config: &Config, layout: &Layout, release: Option<&str>) -> Result<()> {
    let schedule = match release {
        Some(id) => schedule_of(config, &layout.release(id))?,
        None => Schedule::default(),
    };
    // What was installed is also found on the server itself (the crontab's block, the units'
    // marker): a lost or damaged record only costs its list.
    let before = Installed::read(layout).unwrap_or_else(|err| {
        output::warn(format!("{err:#}; writing it again"));
        Installed::default()
    });
    let installer = config.jobs.installer.resolve();
    if schedule.jobs.is_empty() && before.jobs.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(layout.jobs_dir())
        .with_context(|| format!("failed to create `{}`", layout.jobs_dir().display()))?;
    let launcher = Launcher::new(config, layout)?;
    // A change of installer takes the jobs away from the old one first.
    if !before.installer.is_empty() && before.installer != installer.as_str() {
        remove_all(config, layout, &before)?;
    }
    let jobs = match installer {
        Installer::Cron => cron::install(layout, &launcher, &schedule)?,
        other => timers::install(config, layout, &launcher, other, &schedule, &before)?,
    };
    let installed = Installed {
        installer: installer.as_str().into(),
        release: release.map(str::to_string),
        jobs,
    };
    if installed.jobs != before.jobs || installed.installer != before.installer {
        let names: Vec<&str> = installed.jobs.iter().map(|j| j.name.as_str()).collect();
        let gone: Vec<&str> = before
            .jobs
            .iter()
            .filter(|old| !installed.jobs.iter().any(|new| new.name == old.name))
            .map(|j| j.name.as_str())
            .collect();
        let mut line = match names.is_empty() {
            true => "jobs: none installed".to_string(),
            false => format!(
                "jobs: installed {} ({})",
                names.join(", "),
                installed.installer
            ),
        };
        if !gone.is_empty() {
            line.push_str(&format!("; removed {}", gone.join(", ")));
        }
        output::say(line);
    }
    installed.write(layout)
}

/// Removes what `installed` put in place, with the installer that put it there.
fn remove_all(config: &Config, layout: &Layout, installed: &Installed) -> Result<()> {
    match installed.installer.as_str() {
        "cron" => cron::remove(layout),
        "systemd" => timers::remove(config, layout, Installer::Systemd, installed),
        "systemd-user" => timers::remove(config, layout, Installer::SystemdUser, installed),
        _ => Ok(()),
    }
}

/// Installs the jobs of the live release, whatever was installed before: after a deploy died
/// mid-way, and to put the jobs back after a failed switch.
pub fn install_live(config: &Config, layout: &Layout) -> Result<()> {
    let live = layout.live_release()?;
    install(config, layout, live.as_deref())
}
