//! Scheduled jobs. What runs and when is the app's, committed beside its code in a file of
//! the repository (`schedule.toml`, `[[job]]` tables), so that it goes live, and is rolled
//! back, with the release; how the jobs are installed on this server is the server's, in
//! `[jobs]` of `ats-hook.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

use super::{Calendar, Duration, RelPath};

/// `[jobs]` of the server's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    /// The file of the release that declares its jobs.
    #[serde(default = "default_file")]
    pub file: RelPath,
    /// What runs them.
    #[serde(default)]
    pub installer: Installer,
    /// Where the systemd units are written (default: `/etc/systemd/system` for system units,
    /// `~/.config/systemd/user` for user units).
    pub units: Option<PathBuf>,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            file: default_file(),
            installer: Installer::default(),
            units: None,
        }
    }
}

fn default_file() -> RelPath {
    RelPath::new(SCHEDULE_FILE).expect("a valid path")
}

/// The file a release declares its jobs in, unless `[jobs] file` names another.
pub const SCHEDULE_FILE: &str = "schedule.toml";

/// What runs the jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Installer {
    /// systemd timers when systemd runs the machine (system units as root, else user units),
    /// else cron.
    #[default]
    Auto,
    /// A `.timer` and a `.service` per job, system units (`/etc/systemd/system`).
    Systemd,
    /// The same as user units of the deploy user (`systemctl --user`; needs lingering).
    SystemdUser,
    /// A block of the deploy user's crontab that ats-hook owns.
    Cron,
}

impl Installer {
    /// What `auto` means on this machine, for a deploy run by the deploy root's owner.
    pub fn resolve(self) -> Installer {
        match self {
            Installer::Auto if Path::new("/run/systemd/system").is_dir() => {
                if nix::unistd::geteuid().is_root() {
                    Installer::Systemd
                } else {
                    Installer::SystemdUser
                }
            }
            Installer::Auto => Installer::Cron,
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Installer::Auto => "auto",
            Installer::Systemd => "systemd",
            Installer::SystemdUser => "systemd-user",
            Installer::Cron => "cron",
        }
    }
}

/// The schedule file of a release.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, rename = "job")]
    pub jobs: Vec<Job>,
}

/// What a job does when a run starts while the last one still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// The new run does not happen (it is recorded as skipped).
    #[default]
    Skip,
    /// The new run waits for the running one to end; at most one run waits.
    Wait,
    /// The running one is stopped (its process group, SIGTERM then SIGKILL) and the new one
    /// starts.
    Replace,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Wait => "wait",
            Overlap::Replace => "replace",
        }
    }
}

/// One `[[job]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub name: JobName,
    /// Cron's fields (`"*/5 * * * *"`, six with seconds first) or a word (`daily`).
    pub schedule: Calendar,
    /// A shell command, run in the live release's folder.
    pub run: String,
    /// A run still going at this age is stopped with its process group.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub overlap: Overlap,
    /// Each run starts up to this much later, at random (spreads jobs of many servers).
    pub random_delay: Option<Duration>,
    /// Variables of this job, over the steps' environment (which it always gets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}

/// A job's name: it names the job's units, lock and logs, so it is short and plain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct JobName(String);

impl JobName {
    pub fn new(text: &str) -> Result<JobName> {
        super::values::plain_name("job", text)?;
        Ok(JobName(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        JobName::new(&text).map_err(|err| serde::de::Error::custom(format!("{err:#}")))
    }
}

impl Schedule {
    /// Reads `text` (the file `path` names, for messages) and checks it for `installer`.
    pub fn parse(text: &str, path: &str, installer: Installer) -> Result<Schedule> {
        let schedule: Schedule = toml::from_str(text)
            .map_err(|err| anyhow::anyhow!("{}", err.to_string().trim_end()))
            .with_context(|| format!("invalid schedule file `{path}`"))?;
        schedule
            .check(installer)
            .with_context(|| format!("invalid schedule file `{path}`"))?;
        Ok(schedule)
    }

    fn check(&self, installer: Installer) -> Result<()> {
        let mut names = BTreeSet::new();
        for job in &self.jobs {
            if !names.insert(job.name.as_str()) {
                bail!("two jobs are named `{}`", job.name);
            }
            if job.run.trim().is_empty() {
                bail!("job `{}` has an empty `run`", job.name);
            }
            if let Some(key) = job.env.keys().find(|key| !valid_variable(key)) {
                bail!("job `{}`: `{key}` is not a variable name", job.name);
            }
            if installer.resolve() == Installer::Cron {
                job.schedule
                    .cron_fields()
                    .with_context(|| format!("job `{}`", job.name))?;
            }
        }
        Ok(())
    }

    /// The release's schedule: an absent file is a release without jobs.
    pub fn of_release(section: &JobsSection, release_dir: &Path) -> Result<Schedule> {
        let path = release_dir.join(section.file.as_path());
        match std::fs::read_to_string(&path) {
            Ok(text) => Schedule::parse(&text, &section.file.to_string(), section.installer),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Schedule::default()),
            Err(err) => Err(err)
                .with_context(|| format!("failed to read schedule file `{}`", path.display())),
        }
    }

    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|job| job.name.as_str() == name)
    }
}

fn valid_variable(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Schedule> {
        Schedule::parse(text, SCHEDULE_FILE, Installer::Cron)
    }

    #[test]
    fn a_schedule_file() {
        let schedule = parse(
            "[[job]]\nname = \"clearsessions\"\nschedule = \"daily\"\nrun = \"manage.py clearsessions\"\n\
             [[job]]\nname = \"report\"\nschedule = \"*/5 * * * *\"\nrun = \"./report\"\ntimeout = \"2m\"\noverlap = \"replace\"\nrandom_delay = \"30s\"\nenv = { LEVEL = \"1\" }\n",
        )
        .unwrap();
        assert_eq!(schedule.jobs.len(), 2);
        let report = schedule.job("report").unwrap();
        assert_eq!(report.overlap, Overlap::Replace);
        assert_eq!(report.timeout.0, std::time::Duration::from_secs(120));
        assert_eq!(
            schedule.job("clearsessions").unwrap().overlap,
            Overlap::Skip
        );
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (text, says) in [
            ("[[job]]\nname = \"a\"\nschedule = \"99 * * * *\"\nrun = \"x\"\n", "line 3"),
            ("[[job]]\nname = \"A b\"\nschedule = \"daily\"\nrun = \"x\"\n", "invalid job name"),
            ("[[job]]\nname = \"a\"\nschedule = \"daily\"\nrun = \"x\"\n[[job]]\nname = \"a\"\nschedule = \"daily\"\nrun = \"y\"\n", "two jobs are named `a`"),
            ("[[job]]\nname = \"a\"\nschedule = \"daily\"\nrun = \"x\"\noverlap = \"queue\"\n", "unknown variant `queue`"),
            ("[[job]]\nname = \"a\"\nschedule = \"*/2 * * * * *\"\nrun = \"x\"\n", "cron cannot"),
            ("[[job]]\nname = \"a\"\nschedule = \"daily\"\nrun = \"x\"\nevery = 1\n", "unknown field `every`"),
            ("[[job]]\nname = \"a\"\nschedule = \"daily\"\nrun = \" \"\n", "empty `run`"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.contains("schedule.toml"), "{err}");
        }
        assert!(Schedule::parse(
            "[[job]]\nname = \"a\"\nschedule = \"*/2 * * * * *\"\nrun = \"x\"\n",
            SCHEDULE_FILE,
            Installer::Systemd
        )
        .is_ok());
    }
}
