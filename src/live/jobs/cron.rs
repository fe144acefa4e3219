//! Jobs under cron: one block of the deploy user's crontab, between two marker lines that name
//! the deploy root. The block is rewritten whole at each install and the rest of the table is
//! kept as it was, byte for byte: the user's own lines, comments and variables.
//!
//! Cron starts a new process at every tick, so the overlap policy is `run-job`'s lock alone;
//! the random delay is slept by `run-job` (`--random-delay`), since cron has none.

use anyhow::{bail, Context, Result};

use super::{InstalledJob, Launcher};
use crate::config::Schedule;
use crate::state::layout::Layout;
use crate::sys::process::{Cmd, Exit};

fn begin_marker(layout: &Layout) -> String {
    format!(
        "# BEGIN ats-hook {} (rewritten at each deploy: edit the release's schedule instead)",
        layout.root().display()
    )
}

fn end_marker(layout: &Layout) -> String {
    format!("# END ats-hook {}", layout.root().display())
}

/// Installs the schedule's jobs as the block; an empty schedule removes the block.
pub(super) fn install(
    layout: &Layout,
    launcher: &Launcher,
    schedule: &Schedule,
) -> Result<Vec<InstalledJob>> {
    let mut block = Vec::new();
    let mut jobs = Vec::new();
    for job in &schedule.jobs {
        let fields = job
            .schedule
            .cron_fields()
            .with_context(|| format!("job `{}`", job.name))?;
        block.push(format!(
            "{fields} {}",
            command_line(launcher, job.name.as_str())
        ));
        jobs.push(InstalledJob {
            name: job.name.to_string(),
            schedule: job.schedule.to_string(),
            unit: String::new(),
        });
    }
    let table = read_table()?;
    let new = with_block(&table, layout, &block);
    if new != table {
        write_table(&new)?;
    }
    Ok(jobs)
}

/// Takes the block out of the table.
pub(super) fn remove(layout: &Layout) -> Result<()> {
    let table = read_table()?;
    let new = with_block(&table, layout, &[]);
    if new != table {
        write_table(&new)?;
    }
    Ok(())
}

/// What cron runs: from the deploy root, with the config named, output to cron (which mails
/// it where mail is set up: `run-job` prints only a failure's one line).
fn command_line(launcher: &Launcher, name: &str) -> String {
    let app: String = launcher
        .app_args
        .iter()
        .map(|arg| format!(" {}", shell_quote(arg)))
        .collect();
    let line = format!(
        "cd {} && exec {} run-job --random-delay --config {}{app} {name}",
        shell_quote(&launcher.root.to_string_lossy()),
        shell_quote(&launcher.exe.to_string_lossy()),
        shell_quote(&launcher.config.to_string_lossy()),
    );
    // `%` ends a crontab command (what follows is its stdin) unless escaped.
    line.replace('%', "\\%")
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The table with this root's block replaced by `lines` (taken out when empty), appended at
/// the end when there was none.
pub(super) fn with_block(table: &str, layout: &Layout, lines: &[String]) -> String {
    let (begin, end) = (begin_marker(layout), end_marker(layout));
    let mut out = Vec::new();
    let mut inside = false;
    let mut placed = false;
    let mut block = vec![begin.clone()];
    block.extend(lines.iter().cloned());
    block.push(end.clone());
    for line in table.lines() {
        if !inside && line == begin {
            inside = true;
            continue;
        }
        if inside {
            if line == end {
                inside = false;
                if !lines.is_empty() && !placed {
                    out.extend(block.iter().cloned());
                    placed = true;
                }
            }
            continue;
        }
        out.push(line.to_string());
    }
    // A block left open (a table cut by hand) is dropped up to its end, and written again.
    if !lines.is_empty() && !placed {
        out.extend(block);
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// The deploy user's table (this process's user's), empty when there is none.
fn read_table() -> Result<String> {
    let cmd = Cmd::new("crontab")
        .arg("-l")
        .timeout(std::time::Duration::from_secs(30));
    let mut text = String::new();
    let finished = cmd
        .stream(&mut |line| {
            text.push_str(line);
            text.push('\n');
        })
        .context("failed to run `crontab -l`: is cron installed (`apt-get install cron`)?")?;
    match finished.exit {
        Exit::Code(0) => Ok(text),
        Exit::Code(1) if text.starts_with("no crontab for") => Ok(String::new()),
        exit => bail!("`crontab -l` failed ({exit}): {}", finished.tail.join("\n")),
    }
}

fn write_table(text: &str) -> Result<()> {
    let finished = Cmd::new("crontab")
        .arg("-")
        .stdin_bytes(text.as_bytes().to_vec())
        .timeout(std::time::Duration::from_secs(30))
        .stream(&mut |_| {})
        .context("failed to run `crontab -`")?;
    if !finished.exit.success() {
        bail!(
            "`crontab -` refused the new table ({}): {}",
            finished.exit,
            finished.tail.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_ours_and_the_rest_is_kept() {
        let layout = Layout::new("/srv/app");
        let mine = "MAILTO=ops@example.com\n# my own\n5 4 * * * /usr/local/bin/backup\n";
        let with = with_block(mine, &layout, &["* * * * * a".into()]);
        assert!(with.starts_with(mine), "{with}");
        assert!(with.contains("# BEGIN ats-hook /srv/app"));
        let again = with_block(&with, &layout, &["0 * * * * b".into()]);
        assert!(!again.contains(" a\n") && again.contains(" b\n"), "{again}");
        assert_eq!(again.matches("# BEGIN").count(), 1);
        let other = Layout::new("/srv/other");
        let both = with_block(&again, &other, &["1 * * * * c".into()]);
        assert!(both.contains(" b\n") && both.contains(" c\n"));
        assert_eq!(
            with_block(&with_block(&both, &other, &[]), &layout, &[]),
            mine
        );
    }

    #[test]
    fn the_command_line_is_quoted_for_sh_and_cron() {
        let mut launcher = Launcher {
            exe: "/usr/bin/ats-hook".into(),
            config: "/srv/it's 100%.toml".into(),
            app_args: Vec::new(),
            root: "/srv/app".into(),
        };
        let line = command_line(&launcher, "report");
        assert_eq!(
            line,
            "cd '/srv/app' && exec '/usr/bin/ats-hook' run-job --random-delay --config '/srv/it'\\''s 100\\%.toml' report"
        );
        // An app among others in its config file is named.
        launcher.app_args = vec!["--app".into(), "backend".into()];
        assert!(command_line(&launcher, "report").ends_with(".toml' '--app' 'backend' report"));
    }
}
