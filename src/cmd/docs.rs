//! `ats-hook completions SHELL` and `ats-hook man [--dir DIR]`: made from the command line's own
//! definition, so they never drift from `--help`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli;

pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<ExitCode> {
    let mut command = cli::definition();
    // Into memory first: the generator panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "ats-hook", &mut script);
    if shell == clap_complete::Shell::Bash {
        script = bash_fix(&script);
    }
    match out.write_all(&script) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => {
            other.context("failed to write the completion script")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> Result<ExitCode> {
    let command = cli::definition();
    let Some(dir) = dir else {
        clap_mangen::Man::new(command)
            .render(out)
            .context("failed to write the manual page")?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create `{}`", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("failed to write the manual pages into `{}`", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to list `{}`", dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".1"))
        .collect();
    pages.sort();
    writeln!(
        out,
        "wrote {} manual pages into `{}`",
        pages.len(),
        dir.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// clap_complete spells the state of a hyphenated command's subcommands two ways in bash: the
/// loop reaching a subcommand says `ats__hook__subcmd__status`, its arm says
/// `ats__subcmd__hook__subcmd__status`, so no subcommand's options ever complete (clap-rs/clap
/// issue 6421, open). The arms are spelled the way the loop spells them.
fn bash_fix(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("ats__subcmd__hook", "ats__hook")
        .into_bytes()
}
