//! The command line. Installed as `hooks/post-receive` (a symlink to the binary), ats-hook is
//! called with git's hook name as `argv[0]` and no arguments; that name picks hook mode.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ats-hook",
    version = env!("ATS_HOOK_VERSION"),
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

    /// The app, when the config holds several (`[apps.NAME]`)
    #[arg(long, value_name = "NAME", env = "ATS_HOOK_APP")]
    pub app: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Print the output of a job's last run (or of run RUN)
    Log {
        name: String,
        /// A run id (see `ats-hook jobs --json`)
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        location: Location,
    },
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
        /// Skip a step the config marks `skippable` (repeatable), as `git push -o ats.skip=STEP`
        #[arg(long, value_name = "STEP")]
        skip: Vec<String>,
        /// Switch without restarting the app, as `git push -o ats.no-restart`
        #[arg(long)]
        no_restart: bool,
        /// A note for the history, as `git push -o ats.note=TEXT`
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        #[command(flatten)]
        location: Location,
    },

    /// Make an older release live again: the previous good one, or RELEASE
    Rollback {
        /// A release id (see `ats-hook releases`)
        release: Option<String>,
        /// Go back even onto a schema the target's migrations did not make (expand/contract
        /// migrations, where old code works on the new schema)
        #[arg(long)]
        force: bool,
        /// Ask the server behind this git remote of your clone, over SSH
        #[arg(long, value_name = "NAME", conflicts_with_all = ["repo", "config"])]
        remote: Option<String>,
        #[command(flatten)]
        location: Location,
    },

    /// The releases on disk: id, commit, ref, state, created, which is live
    Releases {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Ask the server behind this git remote of your clone, over SSH
        #[arg(long, value_name = "NAME", conflicts_with_all = ["repo", "config"])]
        remote: Option<String>,
        #[command(flatten)]
        location: Location,
    },

    /// The deploy history, or one deploy's full output
    Log {
        /// A deploy id (see `ats-hook log`), a release id, or a commit (its newest deploy)
        id: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Ask the server behind this git remote of your clone, over SSH
        #[arg(long, value_name = "NAME", conflicts_with_all = ["repo", "config"])]
        remote: Option<String>,
        #[command(flatten)]
        location: Location,
    },

    /// What is live, since when, from which push; who holds the deploy lock
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Ask the server behind this git remote of your clone, over SSH
        #[arg(long, value_name = "NAME", conflicts_with_all = ["repo", "config"])]
        remote: Option<String>,
        #[command(flatten)]
        location: Location,
    },

    /// Validate the config and print the plan a push would run
    Check(#[command(flatten)] Location),

    /// The live release's scheduled jobs: schedule, next run, last result (`jobs log NAME`:
    /// the last run's output)
    Jobs {
        #[command(subcommand)]
        action: Option<JobsAction>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: Location,
    },

    /// Run a scheduled job of the live release now, as its timer or crontab line does
    RunJob {
        /// The job's name (see `ats-hook jobs`)
        name: String,
        /// Sleep up to the job's `random_delay` first (what the crontab line asks)
        #[arg(long)]
        random_delay: bool,
        #[command(flatten)]
        location: Location,
    },

    /// Set a server up: the bare repository, the hook, the config, the deploy root, the owners
    Install {
        /// The bare repository (created if missing)
        #[arg(long, value_name = "PATH")]
        repo: PathBuf,
        /// The deploy root (default: the repository's path without `.git`)
        #[arg(long, value_name = "PATH")]
        root: Option<PathBuf>,
        /// The user that pushes and owns the repository and the deploy root
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Which hook runs ats-hook: post-receive, or pre-receive for gate mode
        #[arg(long, value_enum, default_value_t = HookKind::PostReceive)]
        hook: HookKind,
        /// Copy the binary into the hook instead of linking it
        #[arg(long)]
        copy: bool,
        /// Put this config in place (replacing the repository's when it differs) instead of
        /// writing the template when there is none; `-` reads it from stdin
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print what would change, and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print, for review, the files the config's handover (`[serve]`) needs outside the
        /// deploy root: the nginx site and upstream file, the slots' systemd template unit, the
        /// sudoers rule; change nothing
        #[arg(long)]
        handover: bool,
        /// Set by root for the deploy user's part: root made (or, in a dry run, would make)
        /// the folders of the repository and the deploy root
        #[arg(long, hide = true)]
        prepared: bool,
    },

    /// Deploy keys: restricted to pushing and fetching one repository
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },

    /// The forced command of a deploy key (run by sshd, not by hand)
    SshGate {
        /// The one repository the key may use
        #[arg(long, value_name = "PATH")]
        repo: PathBuf,
        /// The key's name, recorded as the pusher
        #[arg(long, value_name = "NAME")]
        key_name: Option<String>,
        /// The key may also run `ats-hook rollback`
        #[arg(long)]
        allow_rollback: bool,
        /// The key may only fetch and read (no push, no LFS upload, no deploy)
        #[arg(long, conflicts_with = "allow_rollback")]
        read_only: bool,
    },

    /// Git LFS over SSH for a login that runs commands itself (what `git lfs` asks a server
    /// for as `git-lfs-transfer PATH upload|download`; a deploy key's gate serves it too)
    #[command(hide = true, name = "lfs-transfer")]
    LfsTransfer {
        /// The bare repository, as the client names it (from the home folder, `~/`)
        path: String,
        /// `upload` or `download`
        operation: String,
    },

    /// On the pushing side: git remotes with the server's host key pinned
    Remote {
        #[command(subcommand)]
        action: RemoteAction,
    },

    /// Start what is live when nothing runs it (after a boot): with `[serve]`, the live slot's
    /// release and the workers; what runs is left alone. For a boot unit
    /// (contrib/systemd/ats-hook-start.service)
    Start(Location),

    /// With `[compose]`: run `docker compose ARGS` against the live release's project, files and
    /// environment (`ats-hook compose -- logs -f web`, `-- exec web sh`, `-- ps`)
    Compose {
        #[command(flatten)]
        location: Location,
        /// What to pass on to `docker compose`
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },

    /// Run COMMAND with the env file's variables added: for a systemd unit's `ExecStart`, so
    /// the file is read as the unit's `User=`, never by PID 1 as root
    Exec {
        /// KEY=VALUE lines, the deploy root's `shared/.env`; a missing file adds nothing
        #[arg(long, value_name = "FILE")]
        env_file: PathBuf,
        /// The program and its arguments
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<std::ffi::OsString>,
    },

    /// Try it: a sample app, a bare repo with the hook, a push, a live release, in one folder
    Quickstart {
        /// Where to build the demo (default: a new temporary folder, kept afterwards)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },

    /// Stop the process groups a killed ats-hook left (started by ats-hook itself)
    #[command(hide = true)]
    WatchGroups,

    /// Prepare the spare release the next push builds from (started by a deploy, detached)
    #[command(hide = true)]
    PrepareSpare {
        #[arg(long, value_name = "PATH")]
        repo: PathBuf,
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "NAME")]
        app: Option<String>,
        commit: String,
    },

    /// Print the shell completion script for SHELL (the Debian package installs them)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the manual page, or write one for the tool and each subcommand into DIR
    Man {
        /// Write `ats-hook.1` and `ats-hook-<subcommand>.1` pages into DIR
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookKind {
    PostReceive,
    PreReceive,
}

/// Which repository and user a key is for.
#[derive(Debug, Clone, Args)]
pub struct KeyTarget {
    /// The bare repository the key may push to
    #[arg(long, value_name = "PATH")]
    pub repo: PathBuf,
    /// The account the key logs in as
    #[arg(long, value_name = "USER")]
    pub user: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Authorize a key to push to the repository (and nothing else)
    #[command(group = clap::ArgGroup::new("key").required(true).args(["public_key", "generate"]))]
    Add {
        #[command(flatten)]
        target: KeyTarget,
        /// An existing public key (`id_ed25519.pub`)
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// Make a new ed25519 pair and print what CI needs
        #[arg(long)]
        generate: bool,
        /// The key's name in the history (default: its comment)
        #[arg(long)]
        name: Option<String>,
        /// With --generate: the host name CI connects to (default: this machine's name)
        #[arg(long)]
        host: Option<String>,
        /// With --generate: the SSH port CI connects to
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// With --generate: where the server's `ssh_host_*_key.pub` files are
        #[arg(long, value_name = "DIR", default_value = "/etc/ssh")]
        host_keys: PathBuf,
        /// With --generate: write the private key to FILE (mode 600) instead of printing it
        #[arg(long, value_name = "FILE")]
        private_key_file: Option<PathBuf>,
        /// The key may also roll the site back (`ats-hook rollback --remote`); without it,
        /// it may push, fetch, deploy again a commit the repository holds (`ats-hook deploy
        /// COMMIT`) and read `status`, `releases` and `log`
        #[arg(long)]
        allow_rollback: bool,
        /// The key may only fetch (with its Git LFS objects) and read `status`, `releases` and
        /// `log`: no push, no LFS upload, no deploy, no rollback
        #[arg(long, conflicts_with = "allow_rollback")]
        read_only: bool,
    },
    /// List the repository's deploy keys
    List(#[command(flatten)] KeyTarget),
    /// Remove a deploy key, by fingerprint or name
    Remove {
        #[command(flatten)]
        target: KeyTarget,
        /// `SHA256:...` or the key's name
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// Add a git remote and pin the server's host key
    Add {
        /// The remote's name, e.g. `staging`
        name: String,
        /// `ssh://user@host[:port]/path/app.git` or `user@host:path/app.git`
        url: String,
        /// The server's `known_hosts` line (as `keys add --generate` prints it)
        #[arg(long, value_name = "LINE")]
        host_key: Option<String>,
        /// Read the host key from the server with ssh-keyscan
        #[arg(long)]
        scan: bool,
        /// Pin into FILE instead of `~/.ssh/known_hosts`
        #[arg(long, value_name = "FILE")]
        known_hosts: Option<PathBuf>,
        /// Change an existing remote that points elsewhere
        #[arg(long)]
        force: bool,
    },
}

/// The command line's definition, for completions and manual pages.
pub fn definition() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
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
    match invoked_as.as_deref() {
        Some(hook @ ("post-receive" | "pre-receive")) => {
            args[0] = "ats-hook".into();
            args.insert(1, hook.into());
        }
        // Linked as `git-lfs-transfer`, the server side git-lfs asks for over SSH.
        Some("git-lfs-transfer") => {
            args[0] = "ats-hook".into();
            args.insert(1, "lfs-transfer".into());
        }
        _ => {}
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
        let args = hook_args(vec![
            "/usr/local/bin/git-lfs-transfer".into(),
            "app.git".into(),
            "upload".into(),
        ]);
        assert!(matches!(
            Cli::parse_from(args).command,
            Command::LfsTransfer { ref path, ref operation } if path == "app.git" && operation == "upload"
        ));
        let args = hook_args(vec!["ats-hook".into(), "status".into()]);
        assert!(matches!(
            Cli::parse_from(args).command,
            Command::Status { .. }
        ));
    }
}
