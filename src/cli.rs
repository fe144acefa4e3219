//! The command line. Installed as `hooks/post-receive` (a symlink to the binary), ats-hook is
//! called with git's hook name as `argv[0]` and no arguments; that name picks hook mode.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ats-hook",
    version,
    about = "Push-to-deploy from a bare git repository: atomic releases, steps, restart, history"
)]
pub struct Cli {
    /// More output on stderr (-v debug, -vv trace); `ATS_HOOK_LOG` takes EnvFilter syntax
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the repository and its config are.
#[derive(Debug, Clone, Args, Default)]
pub struct Location {
    /// The bare repository (default: `$GIT_DIR`, else the current folder)
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,

    /// The config file (default: `ats-hook.toml` in the bare repository)
    #[arg(long, value_name = "FILE", env = "ATS_HOOK_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hook mode: read git's ref lines on stdin and deploy (what `hooks/post-receive` runs)
    PostReceive(#[command(flatten)] Location),

    /// Gate mode: deploy before git updates the refs, rejecting the push if the deploy fails
    /// (what `hooks/pre-receive` runs)
    PreReceive(#[command(flatten)] Location),

    /// Deploy a commit by hand, through the same pipeline as a push
    Deploy {
        /// The commit to deploy (default: the tip of `--ref`)
        rev: Option<String>,
        /// The ref the deploy is for (default: the first configured branch)
        #[arg(long = "ref", value_name = "REF")]
        git_ref: Option<String>,
        /// Print the plan (release, steps, restart, health) and change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        location: Location,
    },

    /// Make an older release live again: the previous good one, or RELEASE
    Rollback {
        /// A release id (see `ats-hook releases`)
        release: Option<String>,
        #[command(flatten)]
        location: Location,
    },

    /// The releases on disk: id, commit, ref, state, created, which is live
    Releases {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: Location,
    },

    /// The deploy history, or one deploy's full output
    Log {
        /// A deploy id (see `ats-hook log`)
        id: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: Location,
    },

    /// What is live, since when, from which push; who holds the deploy lock
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: Location,
    },

    /// Validate the config and print the plan a push would run
    Check(#[command(flatten)] Location),

    /// Try it: a sample app, a bare repo with the hook, a push, a live release, in one folder
    Quickstart {
        /// Where to build the demo (default: a new temporary folder, kept afterwards)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Parses the command line, turning a hook's `argv[0]` into its subcommand.
pub fn parse() -> Cli {
    Cli::parse_from(hook_args(std::env::args_os().collect()))
}

fn hook_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let invoked_as = args
        .first()
        .and_then(|arg0| std::path::Path::new(arg0).file_name())
        .map(|name| name.to_string_lossy().into_owned());
    if let Some(hook @ ("post-receive" | "pre-receive")) = invoked_as.as_deref() {
        args[0] = "ats-hook".into();
        args.insert(1, hook.into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn hook_name_selects_hook_mode() {
        let args = hook_args(vec!["/srv/app.git/hooks/post-receive".into()]);
        let cli = Cli::parse_from(args);
        assert!(matches!(cli.command, Command::PostReceive(_)));
        let args = hook_args(vec!["hooks/pre-receive".into()]);
        assert!(matches!(
            Cli::parse_from(args).command,
            Command::PreReceive(_)
        ));
        let args = hook_args(vec!["ats-hook".into(), "status".into()]);
        assert!(matches!(
            Cli::parse_from(args).command,
            Command::Status { .. }
        ));
    }
}
