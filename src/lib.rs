//! ats-hook: server-side push-to-deploy in one binary.
//!
//! The parts, each a folder that imports only the ones below it (`tests/layers.rs` keeps it):
//!
//! ```text
//! cli, cmd      the commands: arguments in, a call below, printing out
//! pipeline      the deploy and the rollback, stage by stage; the only place that knows the order
//! live          restart, health, notify: how a release goes live and is judged
//! steps         the app's steps, their sandbox and environment, what a release migrates
//! outputs       dependency builds kept once per key
//! release       the release store: materialize, trees, recycle, index, stamps, submodules
//! state         the deploy root's layout, history, lock, queue; refs, push options, selection
//! access        SSH keys, the SSH gate, remotes
//! config        ats-hook.toml, one file per section
//! sys           child processes, /proc, HTTP, output, root's care with a user's files
//! ```

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
