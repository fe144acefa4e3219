//! One module per command; each takes its arguments and writes its own output to a
//! `&mut dyn Write` (stdout in the binary), leaving stderr to tracing. The top of the house:
//! commands call into any part below (`pipeline` for deploys and rollbacks) and nothing
//! below calls them.

mod check;
mod compose;
mod deploy;
mod docs;
mod exec;
mod hook;
mod install;
mod jobs;
mod keys;
mod log;
mod quickstart;
mod releases;
mod remote;
mod ssh_gate;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use git2::Repository;

use crate::cli::{Command, KeysAction, Location, RemoteAction};
use crate::config::{Apps, Config};
use crate::pipeline::Trigger;
use crate::state::push_options::PushOptions;
use crate::sys::owner;

pub fn run(command: Command) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::PostReceive(location) => {
            hook::run(&location, Trigger::PostReceive, std::io::stdin().lock())
        }
        Command::PreReceive(location) => {
            hook::run(&location, Trigger::PreReceive, std::io::stdin().lock())
        }
        Command::Deploy {
            rev,
            git_ref,
            dry_run,
            skip,
            no_restart,
            note,
            location,
        } => {
            let mut options = PushOptions {
                skip,
                no_restart,
                dry_run,
                note: None,
                // By hand, a deploy is always asked for.
                force: true,
            };
            if let Some(note) = note {
                options.set_note(&note)?;
            }
            deploy::run(
                &location,
                rev.as_deref(),
                git_ref.as_deref(),
                &options,
                &mut stdout,
            )
        }
        Command::Rollback {
            remote: Some(name),
            release,
            location,
            ..
        } => there(
            &name,
            "rollback",
            false,
            release.as_deref(),
            location.app.as_deref(),
        ),
        Command::Rollback {
            release,
            force,
            location,
            ..
        } => {
            // Rollback changes the deploy user's files and restarts its app: as root, refused
            // before anything is read (`Layout::refuse_root_on_a_users_root` says how).
            if owner::is_root() {
                if let Some(user) = owner::other_owner(&repo_dir(&location)?)? {
                    return Err(crate::state::layout::refusal(
                        &repo_dir(&location)?,
                        &user.name,
                    ));
                }
            }
            let config = load(&location)?;
            crate::pipeline::rollback::rollback(&config, release.as_deref(), force)
        }
        Command::Releases {
            remote: Some(name),
            json,
            location,
            ..
        } => there(&name, "releases", json, None, location.app.as_deref()),
        Command::Releases { json, location, .. } => releases::run(&location, json, &mut stdout),
        Command::Log {
            remote: Some(name),
            id,
            json,
            location,
            ..
        } => there(&name, "log", json, id.as_deref(), location.app.as_deref()),
        Command::Log {
            id, json, location, ..
        } => log::run(&location, id.as_deref(), json, &mut stdout),
        Command::Status {
            remote: Some(name),
            json,
            location,
            ..
        } => there(&name, "status", json, None, location.app.as_deref()),
        Command::Status { json, location, .. } => status::run(&location, json, &mut stdout),
        Command::Check(location) => check::run(&location, &mut stdout),
        Command::Jobs {
            action: None,
            json,
            location,
        } => jobs::list(&load(&location)?, json, &mut stdout),
        Command::Jobs {
            action:
                Some(crate::cli::JobsAction::Log {
                    name,
                    run,
                    location,
                }),
            ..
        } => jobs::log(&load(&location)?, &name, run.as_deref(), &mut stdout),
        Command::RunJob {
            name,
            random_delay,
            location,
        } => crate::live::jobs::run::run(
            &load(&location)?,
            &crate::live::jobs::run::Request {
                name: &name,
                random_delay,
            },
        ),
        Command::Start(location) => crate::pipeline::boot::start(&load(&location)?),
        Command::Install {
            repo,
            user,
            config,
            handover: true,
            ..
        } => install_handover(&repo, config, user.as_deref(), &mut stdout),
        Command::Install {
            repo,
            root,
            user,
            hook,
            copy,
            config,
            dry_run,
            prepared,
            handover: false,
        } => install::run(
            &install::Options {
                repo: &repo,
                root: root.as_deref(),
                user: user.as_deref(),
                hook,
                copy,
                config: config.as_deref(),
                dry_run,
                prepared,
            },
            &mut stdout,
        ),
        Command::Keys { action } => match action {
            KeysAction::Add {
                target,
                public_key,
                generate: _,
                name,
                host,
                port,
                host_keys,
                private_key_file,
                allow_rollback,
                read_only,
            } => keys::add(
                &keys::AddOptions {
                    repo: &target.repo,
                    user: &target.user,
                    public_key: public_key.as_deref(),
                    name: name.as_deref(),
                    host: host.as_deref(),
                    port,
                    host_keys: &host_keys,
                    private_key_file: private_key_file.as_deref(),
                    allow_rollback,
                    read_only,
                },
                &mut stdout,
            ),
            KeysAction::List(target) => keys::list(&target.repo, &target.user, &mut stdout),
            KeysAction::Remove { target, key } => {
                keys::remove(&target.repo, &target.user, &key, &mut stdout)
            }
        },
        Command::SshGate {
            repo,
            key_name,
            allow_rollback,
            read_only,
        } => ssh_gate::run(
            &repo,
            key_name.as_deref(),
            ssh_gate::May {
                rollback: allow_rollback,
                push: !read_only,
            },
        ),
        Command::LfsTransfer { path, operation } => ssh_gate::lfs_login(&path, &operation),
        Command::Remote {
            action:
                RemoteAction::Add {
                    name,
                    url,
                    host_key,
                    scan,
                    known_hosts,
                    force,
                },
        } => remote::add(
            &remote::AddOptions {
                name: &name,
                url: &url,
                host_key: host_key.as_deref(),
                scan,
                known_hosts: known_hosts.as_deref(),
                force,
            },
            &mut stdout,
        ),
        Command::Exec { env_file, command } => exec::run(&env_file, &command),
        Command::Compose { location, args } => compose::run(&load(&location)?, &args),
        Command::WatchGroups => {
            crate::sys::process::watch_groups(std::io::stdin().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Quickstart { dir } => quickstart::run(dir.as_deref(), &mut stdout),
        Command::PrepareSpare {
            repo,
            config,
            app,
            commit,
        } => {
            let config = Apps::load(&config)?.pick(app.as_deref())?;
            crate::pipeline::spare::prepare(&repo, &config, &commit)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => docs::completions(shell, &mut stdout),
        Command::Man { dir } => docs::man(dir.as_deref(), &mut stdout),
    }
}

/// Runs the command on the server behind a git remote.
fn there(
    name: &str,
    command: &str,
    json: bool,
    id: Option<&str>,
    app: Option<&str>,
) -> Result<ExitCode> {
    remote::run_there(
        name,
        &remote::Request {
            command,
            json,
            id,
            app,
        },
    )
}

/// The bare repository's folder: `--repo`, else `$GIT_DIR` (in a hook), else the current
/// folder.
fn repo_dir(location: &Location) -> Result<PathBuf> {
    if let Some(path) = &location.repo {
        return Ok(path.clone());
    }
    if let Some(dir) = std::env::var_os("GIT_DIR") {
        return Ok(PathBuf::from(dir));
    }
    std::env::current_dir().context("failed to find the current folder")
}

/// Loads the config, without opening the repository: reading the history or the plan needs
/// no git, and works for an admin who does not own the repository.
///
/// Run by root on a deploy user's repository or root, it becomes that user (for good) before
/// it opens anything there: a symlink the user planted leads nowhere root could read, and a
/// command of the config (a step's `key`) never runs as root. A `--config` file of root's own
/// (the Ansible role validating its template) is read first, as root.
/// `install --handover`: the handover's files for review, made from the repository's config
/// (read as its owner when root asks).
fn install_handover(
    repo: &Path,
    config: Option<PathBuf>,
    user: Option<&str>,
    out: &mut dyn std::io::Write,
) -> Result<ExitCode> {
    let owner = owner::other_owner(repo)?.map(|u| u.name);
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    let user = user
        .map(str::to_string)
        .or(owner)
        .or(me)
        .context("cannot tell the deploy user: pass `--user`")?;
    let config = load(&Location {
        repo: Some(repo.to_path_buf()),
        config,
        app: None,
    })?;
    let exe = std::env::current_exe().context("failed to find the ats-hook binary")?;
    install::handover::print(&config, &user, &exe, out)?;
    Ok(ExitCode::SUCCESS)
}

/// The config of the app a command works on (`--app`, or the one of a file of one app).
fn load(location: &Location) -> Result<Config> {
    load_apps(location)?.pick(location.app.as_deref())
}

/// Every app of the config, acting as the owner of the repository and their deploy roots.
fn load_apps(location: &Location) -> Result<Apps> {
    let dir = repo_dir(location)?;
    let path = Config::locate(location.config.as_deref(), &dir);
    let roots = |apps: &Apps| -> Vec<PathBuf> {
        apps.list
            .iter()
            .map(|app| app.config.deploy.root.clone())
            .collect()
    };
    if location.config.is_some() && owner::is_root() && owner::other_owner(&path)?.is_none() {
        let apps = Apps::load(&path)?;
        let mut paths = vec![dir.clone()];
        paths.extend(roots(&apps));
        owner::act_as_owner_of(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
        return Ok(apps);
    }
    owner::act_as_owner_of(&[&dir, &path])?;
    let apps = locate_and_load(location, &dir, &path)?;
    owner::act_as_owner_of(
        &roots(&apps)
            .iter()
            .map(PathBuf::as_path)
            .collect::<Vec<_>>(),
    )?;
    Ok(apps)
}

fn locate_and_load(location: &Location, dir: &Path, path: &Path) -> Result<Apps> {
    if location.config.is_none() && !path.exists() {
        if let Some(clone) = clone_around(dir) {
            let remotes = remote::names(&clone);
            let name = remotes
                .as_deref()
                .and_then(|r| r.split(", ").next())
                .unwrap_or("staging");
            bail!(
                "`{}` is a clone of your app, not the server's bare repository: ask the server with `--remote {name}` (this clone's remotes: {}), or pass `--repo PATH` on the server",
                clone.display(),
                remotes.as_deref().unwrap_or("none yet")
            );
        }
    }
    Apps::load(path)
}

/// The working copy `dir` is in, if it is in one.
fn clone_around(dir: &Path) -> Option<PathBuf> {
    let repo = Repository::discover(dir).ok()?;
    if repo.is_bare() {
        return None;
    }
    // Without the trailing slash git2 gives it.
    repo.workdir().map(|dir| dir.components().collect())
}

/// Opens the repository (from git's environment in a hook) and loads every app's config.
fn open_apps(location: &Location) -> Result<(Repository, Apps)> {
    let repo = match &location.repo {
        Some(path) => Repository::open_bare(path),
        None => Repository::open_from_env(),
    };
    let repo = repo.with_context(|| {
        format!(
            "failed to open the repository `{}` (pass `--repo PATH`)",
            repo_dir(location).unwrap_or_default().display()
        )
    })?;
    crate::release::view::in_memory_writes(&repo)?;
    let apps = Apps::load(&Config::locate(location.config.as_deref(), repo.path()))?;
    Ok((repo, apps))
}

/// What a path holds, judged the way git judges a git folder (no repository config is read).
#[derive(Debug, PartialEq, Eq)]
enum RepoKind {
    Missing,
    Bare,
    WorkingCopy,
    File,
    EmptyFolder,
    OtherFolder,
}

fn inspect_repo(path: &Path) -> Result<RepoKind> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(RepoKind::Missing);
    };
    if !meta.is_dir() {
        return Ok(RepoKind::File);
    }
    if path.join(".git").exists() {
        return Ok(RepoKind::WorkingCopy);
    }
    if path.join("HEAD").is_file() && path.join("objects").is_dir() && path.join("refs").is_dir() {
        return Ok(RepoKind::Bare);
    }
    let empty = std::fs::read_dir(path)
        .with_context(|| format!("failed to list `{}`", path.display()))?
        .next()
        .is_none();
    Ok(if empty {
        RepoKind::EmptyFolder
    } else {
        RepoKind::OtherFolder
    })
}
