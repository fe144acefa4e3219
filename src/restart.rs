//! How the running app picks up the new release: in order, touch a file, `systemctl`, a
//! signal to a pidfile's process, a command.
//!
//! Each action fails loudly with what it tried, so the pipeline can switch back.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::config::Restart;
use crate::layout::Layout;
use crate::output;
use crate::process::Cmd;

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
        let cmd = if restart.sudo {
            Cmd::new("sudo").args(["-n", "systemctl", action, unit])
        } else {
            Cmd::new("systemctl").args([action, unit])
        };
        let label = format!(
            "{}systemctl {action} {unit}",
            if restart.sudo { "sudo " } else { "" }
        );
        run_command(cmd.timeout(restart.timeout.0), &label, width, mode)?;
        output::say(format!("restart: {label}"));
    }
    if let Some(signal) = &restart.signal {
        let pidfile = layout.root().join(&signal.pidfile);
        let text = std::fs::read_to_string(&pidfile)
            .with_context(|| format!("failed to read pidfile `{}`", pidfile.display()))?;
        let pid: i32 = text
            .trim()
            .parse()
            .ok()
            .filter(|pid| *pid > 1)
            .with_context(|| format!("pidfile `{}` does not hold a pid", pidfile.display()))?;
        kill(Pid::from_raw(pid), signal.signal.0).with_context(|| {
            format!(
                "failed to send {} to pid {pid} from `{}`",
                signal.signal,
                pidfile.display()
            )
        })?;
        output::say(format!("restart: sent {} to pid {pid}", signal.signal));
    }
    if let Some(command) = &restart.command {
        let cmd = Cmd::shell(command)
            .dir(release_dir)
            .envs(env)
            .timeout(restart.timeout.0);
        run_command(cmd, command, width, mode)?;
        output::say(format!("restart: ran `{command}`"));
    }
    Ok(())
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
        bail!("`{label}` failed ({})", finished.exit);
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
