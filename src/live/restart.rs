//! How the running app picks up the new release: in order, touch a file, `systemctl`, a
//! signal to a pidfile's process (or a start command when none runs), a command.
//!
//! Commands run in the deploy root, never inside a release: a server they start would keep the
//! release as its working directory, and a reload would find it renamed or gone. Each action
//! fails loudly with what it tried, so the pipeline can switch back.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::config::{Restart, RestartEnv};
use crate::state::layout::Layout;
use crate::sys::output;
use crate::sys::process::Cmd;

/// Which way a restart goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The new release went live.
    Deploy,
    /// `current` was put back on the release that was live before. Its restart runs to
    /// completion even when ats-hook is asked to stop, since the stop may be why it is back.
    Back,
}

/// Runs the restart actions against the release `current` now points at; `was_live` is the
/// release it pointed at before.
pub fn run(
    restart: &Restart,
    layout: &Layout,
    release_dir: &Path,
    was_live: Option<&Path>,
    env: &BTreeMap<String, String>,
    width: usize,
    mode: Mode,
) -> Result<()> {
    if let Some(touch) = &restart.touch {
        if let Some(was_live) = was_live {
            after_the_second_of(&was_live.join(touch.as_path()));
        }
        touch_file(layout, &release_dir.join(touch.as_path()))?;
        output::say(format!("restart: touched `{touch}`"));
    }
    for unit in &restart.systemctl {
        let action = restart.systemctl_action.as_str();
        let cmd = Cmd::systemctl(restart.sudo, [action, unit.as_str()]);
        let label = format!(
            "{}systemctl {action} {unit}",
            if restart.sudo { "sudo " } else { "" }
        );
        run_command(cmd.timeout(restart.timeout.0), &label, width, mode)?;
        output::say(format!("restart: {label}"));
    }
    if let Some(signal) = &restart.signal {
        let pidfile = layout.root().join(&signal.pidfile);
        match (running_pid(&pidfile)?, &restart.start) {
            (Ok(pid), _) => {
                kill(Pid::from_raw(pid), signal.signal.0).with_context(|| {
                    format!(
                        "failed to send {} to pid {pid} from `{}`",
                        signal.signal,
                        pidfile.display()
                    )
                })?;
                output::say(format!("restart: sent {} to pid {pid}", signal.signal));
            }
            (Err(not_running), Some(start)) => {
                if let NotRunning::Gone(..) = not_running {
                    // A server would take it for a running copy of itself and refuse to start
                    // (gunicorn does, while the pid is a zombie or another process's).
                    std::fs::remove_file(&pidfile).with_context(|| {
                        format!("failed to remove the stale pidfile `{}`", pidfile.display())
                    })?;
                }
                output::say(format!("restart: {not_running}; starting the app"));
                run_command(shell(start, restart, layout, env), start, width, mode)?;
                output::say(format!("restart: ran `{}`", one_line(start)));
            }
            (Err(not_running), None) => bail!(
                "{not_running}, so there is nothing to send {} to; set `restart.start` to the \
                 command that starts the app when it is not running",
                signal.signal
            ),
        }
    }
    if let Some(command) = &restart.command {
        run_command(shell(command, restart, layout, env), command, width, mode)?;
        output::say(format!("restart: ran `{}`", one_line(command)));
    }
    Ok(())
}

/// A restart command: run in the deploy root, with the environment `restart.env` names.
fn shell(command: &str, restart: &Restart, layout: &Layout, env: &BTreeMap<String, String>) -> Cmd {
    let cmd = Cmd::shell(command)
        .dir(layout.root())
        .timeout(restart.timeout.0);
    match restart.env {
        RestartEnv::Deploy => cmd.envs(env),
        RestartEnv::Clean => cmd.keep_env(|key| {
            matches!(
                key,
                "PATH" | "HOME" | "USER" | "LOGNAME" | "SHELL" | "LANG" | "TZ" | "XDG_RUNTIME_DIR"
            ) || key.starts_with("LC_")
        }),
    }
}

/// A command as the output names it: its first line, and a mark when it has more.
fn one_line(command: &str) -> String {
    let mut lines = command.trim().lines();
    let first = lines.next().unwrap_or_default().trim_end();
    if lines.next().is_some() {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// Why a pidfile names no running process.
enum NotRunning {
    NoPidfile(String),
    Gone(String, i32),
}

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRunning::NoPidfile(path) => write!(f, "no pidfile `{path}`"),
            NotRunning::Gone(path, pid) => write!(
                f,
                "pid {pid} from `{path}` is not running (the stale pidfile is removed)"
            ),
        }
    }
}

/// The running process a pidfile names, or why there is none.
fn running_pid(pidfile: &Path) -> Result<Result<i32, NotRunning>> {
    let shown = pidfile.display().to_string();
    let text = match std::fs::read_to_string(pidfile) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(NotRunning::NoPidfile(shown)))
        }
        Err(err) => {
            return Err(err).with_context(|| format!("failed to read pidfile `{shown}`"));
        }
    };
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 1)
        .with_context(|| format!("pidfile `{shown}` does not hold a pid"))?;
    // Signal 0 only asks whether the process exists; EPERM means it does, as another user. A
    // zombie exists too, but runs no more: it waits for a parent to reap it.
    if crate::sys::procs::alive(pid) {
        Ok(Ok(pid))
    } else {
        Ok(Err(NotRunning::Gone(shown, pid)))
    }
}

fn run_command(cmd: Cmd, label: &str, width: usize, mode: Mode) -> Result<()> {
    let cmd = if mode == Mode::Back {
        cmd.uninterruptible()
    } else {
        cmd
    };
    let mut lines = output::StepLines::new("restart", width);
    let finished = cmd.stream(&mut |line| lines.line(line));
    lines.finish();
    let finished = finished?;
    if !finished.exit.success() {
        bail!("`{}` failed ({})", one_line(label), finished.exit);
    }
    Ok(())
}

/// Waits, if need be, until the clock has left the second of `path`'s modification time.
/// Watchers of a touched file (uWSGI's `touch-reload`) compare whole seconds: a touch in the
/// same second as the file they saw last would not reload the app.
fn after_the_second_of(path: &Path) {
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return;
    };
    let second = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let seen = second(modified);
    // Bounded: a clock that went back must not stall the deploy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1100);
    while second(SystemTime::now()) <= seen && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sets a file's mtime to now, creating it if needed, but only inside the deploy root: a
/// tracked symlink pointing elsewhere is not followed.
fn touch_file(layout: &Layout, path: &Path) -> Result<()> {
    if let Ok(resolved) = path.canonicalize() {
        let root = layout
            .root()
            .canonicalize()
            .with_context(|| format!("failed to resolve `{}`", layout.root().display()))?;
        if !resolved.starts_with(&root) {
            bail!(
                "refusing to touch `{}`: it resolves to `{}`, outside the deploy root",
                path.display(),
                resolved.display()
            );
        }
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("failed to open `{}` to touch it", path.display()))?;
    file.set_modified(SystemTime::now())
        .with_context(|| format!("failed to touch `{}`", path.display()))
}
