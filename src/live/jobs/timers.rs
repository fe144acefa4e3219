//! Jobs under systemd: `<prefix>-<job>.timer` starts `<prefix>-<job>.service`, a oneshot that
//! runs `ats-hook run-job`. System units (written as root, run as the deploy root's owner) or
//! user units of the deploy user (`systemctl --user`, which lingering keeps running without a
//! login).
//!
//! systemd never starts a service that is still running, so a timer that fires during a long
//! run starts nothing: `skip` is systemd's own behaviour. For `wait` and `replace` the timer
//! starts a small second oneshot, `<prefix>-<job>-next.service`, that asks systemd itself:
//! `replace` restarts the job's service (systemd stops the running one, its whole cgroup, and
//! starts it again); `wait` waits while the job's service runs, then starts it. While it waits
//! it is itself running, so a third start is skipped: at most one run waits.
//!
//! Each unit carries `X-AtsHook-Root=` naming the deploy root: a unit of that name that another
//! root (or a person) wrote is never overwritten or removed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Installed, InstalledJob, Launcher};
use crate::config::{Config, Installer, Job, Overlap, Schedule};
use crate::state::layout::Layout;
use crate::sys::process::Cmd;

/// Where the units go.
fn units_dir(config: &Config, installer: Installer) -> Result<PathBuf> {
    if let Some(dir) = &config.jobs.units {
        return Ok(dir.clone());
    }
    match installer {
        Installer::SystemdUser => {
            let user = nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .context("cannot tell this user's home folder")?;
            Ok(user.dir.join(".config/systemd/user"))
        }
        _ => Ok(PathBuf::from("/etc/systemd/system")),
    }
}

fn systemctl(installer: Installer) -> Cmd {
    let cmd = Cmd::new("systemctl");
    let cmd = match installer {
        // A hook run over SSH without a login session may lack the variable that leads
        // `systemctl --user` to the user's manager (which lingering keeps running).
        Installer::SystemdUser if std::env::var_os("XDG_RUNTIME_DIR").is_none() => cmd
            .env(
                "XDG_RUNTIME_DIR",
                format!("/run/user/{}", nix::unistd::getuid()),
            )
            .arg("--user"),
        Installer::SystemdUser => cmd.arg("--user"),
        _ => cmd,
    };
    cmd.timeout(std::time::Duration::from_secs(60))
}

fn marker(layout: &Layout) -> String {
    format!("X-AtsHook-Root={}", layout.root().display())
}

/// A value for a unit file: systemd's specifiers (`%`) escaped.
fn unit_value(text: &str) -> String {
    text.replace('%', "%%")
}

/// An argument of `ExecStart=`, quoted: specifiers, `$` and quotes escaped.
fn exec_arg(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

fn service(
    layout: &Layout,
    launcher: &Launcher,
    installer: Installer,
    job: &Job,
) -> Result<String> {
    let mut text = format!(
        "[Unit]\nDescription=ats-hook job {name} of {root}\n{marker}\n\n[Service]\nType=oneshot\nWorkingDirectory={root_arg}\n\
         ExecStart={exe} run-job --config {config}{app} {name}\n",
        name = job.name,
        root = unit_value(&layout.root().display().to_string()),
        marker = unit_value(&marker(layout)),
        root_arg = unit_value(&layout.root().display().to_string()),
        exe = exec_arg(&launcher.exe.to_string_lossy()),
        config = exec_arg(&launcher.config.to_string_lossy()),
        app = launcher
            .app_args
            .iter()
            .map(|arg| format!(" {}", exec_arg(arg)))
            .collect::<String>(),
    );
    // run-job stops the job at its timeout; systemd's limit is only a backstop past that.
    text.push_str(&format!(
        "TimeoutStartSec={}\n",
        job.timeout.0.as_secs() + 60
    ));
    if installer == Installer::Systemd {
        if let Some(user) = crate::sys::owner::other_owner(layout.root())? {
            text.push_str(&format!(
                "User={}\nGroup={}\n",
                user.name,
                group_name(user.gid)
            ));
        }
    }
    Ok(text)
}

fn group_name(gid: nix::unistd::Gid) -> String {
    nix::unistd::Group::from_gid(gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

fn timer(layout: &Layout, job: &Job, unit: &str) -> String {
    let mut text = format!(
        "[Unit]\nDescription=ats-hook job {name} of {root} ({schedule})\n{marker}\n\n[Timer]\n",
        name = job.name,
        root = unit_value(&layout.root().display().to_string()),
        schedule = unit_value(job.schedule.text()),
        marker = unit_value(&marker(layout)),
    );
    for event in job.schedule.on_calendar() {
        text.push_str(&format!("OnCalendar={event}\n"));
    }
    // systemd's default accuracy is a minute; cron starts on the minute.
    let accuracy = if job.schedule.needs_seconds() {
        "100ms"
    } else {
        "1s"
    };
    text.push_str(&format!("AccuracySec={accuracy}\n"));
    if let Some(delay) = job.random_delay {
        text.push_str(&format!(
            "RandomizedDelaySec={}\n",
            delay.0.as_secs().max(1)
        ));
    }
    let target = match job.overlap {
        Overlap::Skip => format!("{unit}.service"),
        Overlap::Wait | Overlap::Replace => format!("{unit}-next.service"),
    };
    text.push_str(&format!(
        "Unit={target}\n\n[Install]\nWantedBy=timers.target\n"
    ));
    text
}

/// The unit files one job needs, by file name.
fn unit_files(
    layout: &Layout,
    launcher: &Launcher,
    installer: Installer,
    job: &Job,
    unit: &str,
) -> Result<Vec<(String, String)>> {
    let service_text = service(layout, launcher, installer, job)?;
    let mut files = vec![
        (format!("{unit}.service"), service_text.clone()),
        (format!("{unit}.timer"), timer(layout, job, unit)),
    ];
    if job.overlap != Overlap::Skip {
        files.push((
            format!("{unit}-next.service"),
            next_service(layout, installer, job, unit),
        ));
    }
    Ok(files)
}

/// The oneshot the timer starts for `wait` and `replace`: systemctl, on the job's service.
fn next_service(layout: &Layout, installer: Installer, job: &Job, unit: &str) -> String {
    let systemctl = match installer {
        Installer::SystemdUser => "systemctl --user",
        _ => "systemctl",
    };
    let command = match job.overlap {
        Overlap::Replace => format!("{systemctl} restart --no-block {unit}.service"),
        _ => format!(
            "/bin/sh -c 'while :; do case \"$$({systemctl} show --property=ActiveState --value {unit}.service)\" in activating|deactivating|reloading) sleep 1;; *) break;; esac; done; exec {systemctl} start --no-block {unit}.service'"
        ),
    };
    format!(
        "[Unit]\nDescription=ats-hook job {name} of {root}: the next run ({overlap})\n{marker}\n\n[Service]\nType=oneshot\nExecStart={command}\n",
        name = job.name,
        root = unit_value(&layout.root().display().to_string()),
        marker = unit_value(&marker(layout)),
        overlap = job.overlap.as_str(),
    )
}

/// Whether the file at `path` may be written: absent, or ours.
fn ours_or_absent(path: &Path, layout: &Layout) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().any(|line| line == unit_value(&marker(layout)))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(err).with_context(|| format!("failed to read `{}`", path.display())),
    }
}

pub(super) fn install(
    config: &Config,
    layout: &Layout,
    launcher: &Launcher,
    installer: Installer,
    schedule: &Schedule,
    before: &Installed,
) -> Result<Vec<InstalledJob>> {
    let dir = units_dir(config, installer)?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("failed to create `{}`", dir.display()))?;
    let prefix = super::unit_prefix(layout);
    let mut jobs = Vec::new();
    let mut changed_timers = Vec::new();
    let mut written = Vec::new();
    // Every file is checked before any is written: a clash changes nothing.
    let mut planned = Vec::new();
    for job in &schedule.jobs {
        let unit = format!("{prefix}-{}", job.name);
        for (file, text) in unit_files(layout, launcher, installer, job, &unit)? {
            let path = dir.join(&file);
            if !ours_or_absent(&path, layout)? {
                bail!(
                    "`{}` exists and is not ats-hook's for `{}`: rename job `{}`, or remove that unit",
                    path.display(),
                    layout.root().display(),
                    job.name
                );
            }
            planned.push((path, text, unit.clone()));
        }
        jobs.push(InstalledJob {
            name: job.name.to_string(),
            schedule: job.schedule.to_string(),
            unit,
        });
    }
    for (path, text, unit) in planned {
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        crate::sys::files::write_atomically(&path, text.as_bytes(), 0o644)?;
        written.push(path.clone());
        if path.extension().is_some_and(|e| e == "timer") {
            changed_timers.push(format!("{unit}.timer"));
        }
    }
    // What the last install put there (as recorded, and as the units' marker says) and this
    // one does not want.
    let mut gone: Vec<String> = before.jobs.iter().map(|old| old.unit.clone()).collect();
    gone.extend(marked_timers(&dir, layout, &prefix));
    gone.sort();
    gone.dedup();
    gone.retain(|old| !old.is_empty() && !jobs.iter().any(|new| &new.unit == old));
    for old in &gone {
        stop_and_remove(&dir, layout, installer, old)?;
    }
    if written.is_empty() && gone.is_empty() && before.jobs == jobs {
        return Ok(jobs);
    }
    if !written.is_empty() || !gone.is_empty() {
        systemctl(installer)
            .arg("daemon-reload")
            .read()
            .context("systemd did not reload its units")?;
    }
    for job in &jobs {
        let timer = format!("{}.timer", job.unit);
        let verb = if changed_timers.contains(&timer) {
            "restart"
        } else {
            "start"
        };
        systemctl(installer)
            .args(["enable", "--quiet", &timer])
            .read()
            .with_context(|| format!("failed to enable `{timer}`"))?;
        systemctl(installer)
            .args([verb, &timer])
            .read()
            .with_context(|| format!("failed to start `{timer}`"))?;
    }
    Ok(jobs)
}

/// The timers in `dir` that are ats-hook's for this root, by unit name (without `.timer`).
fn marked_timers(dir: &Path, layout: &Layout, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let unit = name.strip_suffix(".timer")?.to_string();
            let ours = unit.starts_with(&format!("{prefix}-"))
                && std::fs::read_to_string(entry.path())
                    .is_ok_and(|text| text.lines().any(|l| l == unit_value(&marker(layout))));
            ours.then_some(unit)
        })
        .collect()
}

/// Stops a job's timer (a run under way finishes), disables it and removes its files.
fn stop_and_remove(dir: &Path, layout: &Layout, installer: Installer, unit: &str) -> Result<()> {
    let timer = format!("{unit}.timer");
    // A unit systemd no longer knows cannot be stopped; that is no failure.
    let _ = systemctl(installer)
        .args(["disable", "--now", "--quiet", &timer])
        .read();
    for file in [
        timer.clone(),
        format!("{unit}.service"),
        format!("{unit}-next.service"),
    ] {
        let path = dir.join(&file);
        if path.exists() && ours_or_absent(&path, layout)? {
            std::fs::remove_file(&path)
                .with_context(|| format!("failed to remove `{}`", path.display()))?;
        }
    }
    Ok(())
}

/// Removes every job `installed` names.
pub(super) fn remove(
    config: &Config,
    layout: &Layout,
    installer: Installer,
    installed: &Installed,
) -> Result<()> {
    let dir = units_dir(config, installer)?;
    for job in &installed.jobs {
        stop_and_remove(&dir, layout, installer, &job.unit)?;
    }
    systemctl(installer)
        .arg("daemon-reload")
        .read()
        .context("systemd did not reload its units")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    fn job(text: &str) -> Job {
        Schedule::parse(text, "schedule.toml", Installer::Systemd)
            .unwrap()
            .jobs
            .remove(0)
    }

    fn launcher() -> Launcher {
        Launcher {
            exe: "/usr/bin/ats-hook".into(),
            config: "/srv/app.git/ats-hook.toml".into(),
            app_args: Vec::new(),
            root: "/srv/app".into(),
        }
    }

    #[test]
    fn a_user_units_job_and_its_timer() {
        let layout = Layout::new("/srv/app");
        let job = job("[[job]]\nname = \"report\"\nschedule = \"30 2 * * mon-fri\"\nrun = \"./report 100%\"\nrandom_delay = \"5m\"\ntimeout = \"10m\"\n");
        let files = unit_files(
            &layout,
            &launcher(),
            Installer::SystemdUser,
            &job,
            "ats-hook-app-report",
        )
        .unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["ats-hook-app-report.service", "ats-hook-app-report.timer"]
        );
        let service = &files[0].1;
        assert!(service.contains("Type=oneshot\n"), "{service}");
        assert!(service.contains("ExecStart=\"/usr/bin/ats-hook\" run-job --config \"/srv/app.git/ats-hook.toml\" report\n"), "{service}");
        assert!(service.contains("WorkingDirectory=/srv/app\n"), "{service}");
        assert!(service.contains("TimeoutStartSec=660\n"), "{service}");
        assert!(service.contains("X-AtsHook-Root=/srv/app\n"), "{service}");
        // A user manager runs its units as its user: no `User=`, and the command stays in the
        // release, not in the unit.
        assert!(!service.contains("User="), "{service}");
        assert!(!service.contains("./report"), "{service}");
        let timer = &files[1].1;
        assert!(
            timer.contains("OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00\n"),
            "{timer}"
        );
        assert!(timer.contains("RandomizedDelaySec=300\n"), "{timer}");
        assert!(timer.contains("AccuracySec=1s\n"), "{timer}");
        assert!(
            timer.contains("Unit=ats-hook-app-report.service\n"),
            "{timer}"
        );
        assert!(timer.contains("WantedBy=timers.target\n"), "{timer}");
    }

    #[test]
    fn wait_and_replace_go_through_a_second_unit() {
        let layout = Layout::new("/srv/app");
        for (overlap, says) in [
            (
                "replace",
                "ExecStart=systemctl --user restart --no-block ats-hook-app-r.service\n",
            ),
            ("wait", "in activating|deactivating|reloading) sleep 1;;"),
        ] {
            let job = job(&format!("[[job]]\nname = \"r\"\nschedule = \"hourly\"\nrun = \"x\"\noverlap = \"{overlap}\"\n"));
            let files = unit_files(
                &layout,
                &launcher(),
                Installer::SystemdUser,
                &job,
                "ats-hook-app-r",
            )
            .unwrap();
            assert_eq!(files.len(), 3);
            assert!(files[1].1.contains("Unit=ats-hook-app-r-next.service\n"));
            assert_eq!(files[2].0, "ats-hook-app-r-next.service");
            assert!(files[2].1.contains(says), "{}", files[2].1);
        }
    }
}
