//! ats-hook: server-side push-to-deploy in one binary.
//!
//! The modules follow the pipeline a push runs through (`refs` → `select` → `lock` → `release`
//! → `steps` → `restart` → `record`), orchestrated by `deploy`; `cmd` holds one module per
//! command.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod confine;
pub mod deploy;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod http;
pub mod index;
pub mod layout;
pub mod lock;
pub mod notify;
pub mod output;
pub mod outputs;
pub mod owner;
pub mod plan;
pub mod process;
pub mod procs;
pub mod prune;
pub mod push_options;
pub mod queue;
pub mod record;
pub mod recover;
pub mod refs;
pub mod release;
pub mod restart;
pub mod schema;
pub mod select;
pub mod spare;
pub mod sshkey;
pub mod stamps;
pub mod steps;
pub mod stop;
pub mod submodules;

use std::process::ExitCode;

/// Parses the command line, sets up output, runs the command.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = cli::parse();
    output::init(cli.verbose);
    process::tie_children_to_this_process();
    cmd::run(cli.command).map_err(output::with_disk_full_hint)
}
