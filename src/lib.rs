//! ats-hook: server-side push-to-deploy in one binary.
//!
//! The modules follow the pipeline a push runs through (`refs` → `select` → `lock` → `release`
//! → `steps` → `restart` → `record`), orchestrated by `deploy`; `cmd` holds one module per
//! command.

pub mod access;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod live;
pub mod outputs;
pub mod pipeline;
pub mod release;
pub mod state;
pub mod steps;
pub mod sys;

use std::process::ExitCode;

/// Parses the command line, sets up output, runs the command.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = cli::parse();
    sys::output::init(cli.verbose);
    sys::process::tie_children_to_this_process();
    cmd::run(cli.command).map_err(sys::output::with_disk_full_hint)
}
