//! `ats-hook install --repo PATH`: set a server up for push-to-deploy.
//!
//! It works out what is missing (the bare repository, the hook, the config, the deploy root,
//! the owners), says it, and makes each change in a way that a second run finds done: so a run
//! that stops half way is completed by running it again, and `--dry-run` shows the same list
//! without changing anything. Nothing that exists is overwritten: a hook that is not ats-hook
//! or an existing config is left as it is (unless `--config` names the one to put in place).
//!
//! Run by root for a deploy user, it is two parts: `as_root` does only what root must (a new
//! folder in `/srv`, giving a tree to the user), through `owner`; everything else is this
//! module, run again as the deploy user in a child process, so that nothing the user could
//! have planted in its own files (a symlink at the config's temporary name) reaches root.

mod as_root;
pub mod handover;

use crate::config::Apps;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use git2::{Repository, RepositoryInitOptions};

use super::RepoKind;
use nix::unistd::{AccessFlags, User};

use crate::sys::owner;

use crate::cli::HookKind;
use crate::config;
use crate::state::layout::Layout;

pub struct Options<'a> {
    pub repo: &'a Path,
    pub root: Option<&'a Path>,
    pub user: Option<&'a str>,
    pub hook: HookKind,
    pub copy: bool,
    /// The config to put in place, `-` for stdin.
    pub config: Option<&'a Path>,
    pub dry_run: bool,
    /// Root made the repository's and the deploy root's folders (or would, in a dry run).
    pub prepared: bool,
}

/// One change install makes.
enum Change {
    InitBare(PathBuf),
    InstallHook {
        path: PathBuf,
        exe: PathBuf,
        copy: bool,
    },
    RemoveHook(PathBuf),
    WriteConfig {
        path: PathBuf,
        text: String,
        /// From `--config`, not the template.
        given: bool,
    },
    CreateDir(PathBuf),
    /// An empty env file, mode 0600, for the secrets the config reads from it.
    CreateEnvFile(PathBuf),
    /// A setting of the bare repository's, to `true`.
    Setting {
        repo: PathBuf,
        setting: &'static Setting,
    },
}

/// A setting install turns on in the bare repository, and why.
pub struct Setting {
    pub key: &'static str,
    pub why: &'static str,
}

/// What install sets in every bare repository.
pub const SETTINGS: [Setting; 2] = [
    Setting {
        key: PUSH_OPTIONS,
        why: "so pushes can pass `-o ats.…`",
    },
    Setting {
        key: FSCK_OBJECTS,
        why: "so git refuses malformed objects (a tree naming a path twice) before they are stored",
    },
];

/// Has `git receive-pack` check every object pushed.
pub const FSCK_OBJECTS: &str = "receive.fsckObjects";

impl Change {
    fn describe(&self) -> String {
        match self {
            Change::InitBare(path) => format!("create the bare repository `{}`", path.display()),
            Change::InstallHook {
                path,
                exe,
                copy: false,
            } => {
                format!("link the hook `{}` to `{}`", path.display(), exe.display())
            }
            Change::InstallHook {
                path,
                exe,
                copy: true,
            } => {
                format!("copy `{}` to the hook `{}`", exe.display(), path.display())
            }
            Change::RemoveHook(path) => {
                format!(
                    "remove `{}`: it is ats-hook too, and one push must deploy once",
                    path.display()
                )
            }
            Change::WriteConfig {
                path, given: false, ..
            } => {
                format!("write the config `{}` from the template", path.display())
            }
            Change::WriteConfig {
                path, given: true, ..
            } => format!("write the config `{}` as given", path.display()),
            Change::CreateDir(path) => format!("create `{}`", path.display()),
            Change::CreateEnvFile(path) => format!(
                "create the empty env file `{}` (mode 0600) for the app's settings and secrets",
                path.display()
            ),
            Change::Setting { repo, setting } => format!(
                "set `{}` in `{}`, {}",
                setting.key,
                repo.display(),
                setting.why
            ),
        }
    }

    fn apply(&self) -> Result<()> {
        match self {
            Change::InitBare(path) => {
                let mut options = RepositoryInitOptions::new();
                options.bare(true).initial_head("main").mkpath(true);
                Repository::init_opts(path, &options).with_context(|| {
                    format!("failed to create the bare repository `{}`", path.display())
                })?;
            }
            Change::InstallHook { path, exe, copy } => {
                if let Some(hooks) = path.parent() {
                    fs::create_dir_all(hooks)
                        .with_context(|| format!("failed to create `{}`", hooks.display()))?;
                }
                let tmp = path.with_extension("ats-hook-new");
                let _ = fs::remove_file(&tmp);
                if *copy {
                    fs::copy(exe, &tmp).with_context(|| {
                        format!("failed to copy `{}` to `{}`", exe.display(), tmp.display())
                    })?;
                    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
                } else {
                    std::os::unix::fs::symlink(exe, &tmp)
                        .with_context(|| format!("failed to create `{}`", tmp.display()))?;
                }
                fs::rename(&tmp, path)
                    .with_context(|| format!("failed to install the hook `{}`", path.display()))?;
            }
            Change::RemoveHook(path) => fs::remove_file(path)
                .with_context(|| format!("failed to remove `{}`", path.display()))?,
            Change::WriteConfig { path, text, .. } => {
                // Created anew (a name left there, a symlink too, is removed, never followed),
                // readable by the deploy user's group only: it may hold a webhook's token.
                let tmp = path.with_extension("toml.new");
                let _ = fs::remove_file(&tmp);
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o640)
                    .open(&tmp)
                    .with_context(|| format!("failed to create `{}`", tmp.display()))?;
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("failed to write `{}`", tmp.display()))?;
                fs::rename(&tmp, path)
                    .with_context(|| format!("failed to write `{}`", path.display()))?;
            }
            Change::CreateDir(path) => {
                // The state (history, logs, locks) is the deploy user's alone.
                let state = path
                    .ancestors()
                    .any(|p| p.ends_with(crate::state::layout::STATE_DIR));
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(if state { 0o700 } else { 0o755 })
                    .create(path)
                    .with_context(|| format!("failed to create `{}`", path.display()))?
            }
            Change::CreateEnvFile(path) => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("failed to create `{}`", parent.display()))?;
                }
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("failed to create `{}`", path.display()))?;
            }
            Change::Setting { repo, setting } => Repository::open_bare(repo)
                .and_then(|repo| repo.config())
                .and_then(|mut config| config.set_bool(setting.key, true))
                .with_context(|| {
                    format!("failed to set `{}` in `{}`", setting.key, repo.display())
                })?,
        }
        Ok(())
    }
}

/// The setting that lets pushes pass options (`git push -o`) to the hooks.
pub const PUSH_OPTIONS: &str = "receive.advertisePushOptions";

/// Whether the bare repository `repo` has `key` set to true; false when it does not exist.
pub fn has_setting(repo: &Path, key: &str) -> bool {
    git2::Config::open(&repo.join("config"))
        .and_then(|config| config.get_bool(key))
        .unwrap_or(false)
}

pub fn run(options: &Options<'_>, out: &mut dyn Write) -> Result<ExitCode> {
    if owner::is_root() {
        if let Some(user) = deploy_user(options)? {
            return as_root::run(options, &user, out);
        }
    } else if let Some(name) = options.user {
        let me = User::from_uid(nix::unistd::getuid()).ok().flatten();
        if !me.is_some_and(|me| me.name == name) {
            bail!("only root can set up a repository for `{name}`: run install as root, or as `{name}` without `--user`");
        }
    }
    let changes = plan(options)?;
    if changes.is_empty() {
        writeln!(
            out,
            "nothing to change: `{}` is set up",
            options.repo.display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    for change in &changes {
        if options.dry_run {
            writeln!(out, "would {}", change.describe())?;
        } else {
            change.apply()?;
            writeln!(out, "did {}", change.describe())?;
        }
    }
    if !options.dry_run {
        let config = options.repo.join(config::FILE_NAME);
        writeln!(
            out,
            "\nnext: edit `{}` (steps, restart, health), then `ats-hook check --repo {}`",
            config.display(),
            options.repo.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Who root sets up for: `--user`, or else the user who owns the repository or the deploy
/// root already. `None`: root sets up for itself.
fn deploy_user(options: &Options<'_>) -> Result<Option<User>> {
    if let Some(name) = options.user {
        let user = User::from_name(name)
            .with_context(|| format!("failed to look up user `{name}`"))?
            .with_context(|| {
                format!("no user `{name}` on this machine: create it first (`useradd -m {name}`)")
            })?;
        return Ok(Some(user));
    }
    let repo = absolute(options.repo)?;
    // A repository without a root to tell is refused later, by the part that reads it.
    let root = match options.root {
        Some(root) => Some(absolute(root)?),
        None => default_root(&repo).ok(),
    };
    Ok(match owner::other_owner(&repo)? {
        Some(user) => Some(user),
        None => root
            .map(|root| owner::other_owner(&root))
            .transpose()?
            .flatten(),
    })
}

/// The config `--config` names (`-`: stdin), checked.
fn given_config(path: &Path) -> Result<String> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("failed to read the config from stdin")?
    } else {
        fs::read_to_string(path).with_context(|| format!("failed to read `{}`", path.display()))?
    };
    Apps::parse(&text, path)?;
    Ok(text)
}

/// Everything install would change, after checking that it can: nothing is changed here.
fn plan(options: &Options<'_>) -> Result<Vec<Change>> {
    let repo = absolute(options.repo)?;
    let given = options.config.map(given_config).transpose()?;
    let mut changes = Vec::new();

    match super::inspect_repo(&repo)? {
        RepoKind::Missing if options.prepared => changes.push(Change::InitBare(repo.clone())),
        RepoKind::Missing => {
            writable_ancestor(&repo)?;
            changes.push(Change::InitBare(repo.clone()));
        }
        RepoKind::EmptyFolder => changes.push(Change::InitBare(repo.clone())),
        RepoKind::Bare => {}
        RepoKind::File => bail!("`{}` is a file, not a bare repository", repo.display()),
        RepoKind::WorkingCopy => bail!(
            "`{}` is a working copy, not a bare repository: make one with `git clone --bare {} {}.git`",
            repo.display(),
            repo.display(),
            repo.display()
        ),
        RepoKind::OtherFolder => {
            bail!("`{}` is a folder but not a git repository; refusing to touch it", repo.display())
        }
    }

    for setting in &SETTINGS {
        if !has_setting(&repo, setting.key) {
            changes.push(Change::Setting {
                repo: repo.clone(),
                setting,
            });
        }
    }

    let config_path = repo.join(config::FILE_NAME);
    // The apps of the config given, or else of the one in place: each gets its deploy root.
    let loaded: Option<Result<Apps>> = match &given {
        Some(text) => Some(Ok(Apps::parse(text, &config_path)?)),
        None if config_path.exists() => Some(Apps::load(&config_path)),
        None => None,
    };
    let apps = loaded.as_ref().and_then(|loaded| loaded.as_ref().ok());
    let app_roots: Vec<PathBuf> = apps
        .iter()
        .filter(|apps| apps.several())
        .flat_map(|apps| apps.list.iter().map(|app| app.config.deploy.root.clone()))
        .collect();
    let root = match (options.root, app_roots.first()) {
        (Some(root), _) => absolute(root)?,
        (None, Some(first)) => first.clone(),
        (None, None) => default_root(&repo)?,
    };
    if !app_roots.is_empty() && !app_roots.contains(&root) {
        tracing::warn!(
            "`--root {}` is not the root of an app of the config; the apps' own roots are set up",
            root.display()
        );
    }
    let roots = if app_roots.is_empty() {
        vec![root.clone()]
    } else {
        app_roots
    };
    for root in &roots {
        if !(options.prepared && fs::symlink_metadata(root).is_err()) {
            writable_ancestor(root)?;
        }
    }

    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .context("failed to find the ats-hook binary")?;
    let hooks = repo.join("hooks");
    let (name, other) = match options.hook {
        HookKind::PostReceive => ("post-receive", "pre-receive"),
        HookKind::PreReceive => ("pre-receive", "post-receive"),
    };
    let hook = hooks.join(name);
    match hook_state(&hook, &exe)? {
        HookState::Missing => changes.push(Change::InstallHook {
            path: hook,
            exe: exe.clone(),
            copy: options.copy,
        }),
        HookState::Ours { copy } if copy != options.copy => changes.push(Change::InstallHook {
            path: hook,
            exe: exe.clone(),
            copy: options.copy,
        }),
        HookState::Ours { .. } => {}
        HookState::Foreign => bail!(
            "`{}` exists and is not ats-hook: move it away first (install leaves it as it is)",
            hook.display()
        ),
    }
    if let HookState::Ours { .. } = hook_state(&hooks.join(other), &exe)? {
        changes.push(Change::RemoveHook(hooks.join(other)));
    }

    let mut env_files: Vec<PathBuf> = apps
        .iter()
        .flat_map(|apps| apps.list.iter().filter_map(|app| app.config.env_file()))
        .collect();
    if let Some(text) = given {
        if fs::read_to_string(&config_path).ok().as_ref() != Some(&text) {
            changes.push(Change::WriteConfig {
                path: config_path,
                text,
                given: true,
            });
        }
    } else if !config_path.exists() {
        let text = config_template(&root);
        env_files.extend(
            config::Config::parse(&text, &config_path)
                .ok()
                .and_then(|c| c.env_file()),
        );
        changes.push(Change::WriteConfig {
            path: config_path,
            text,
            given: false,
        });
    } else {
        match &loaded {
            Some(Ok(existing)) if !existing.several() => {
                let existing = &existing.list[0].config;
                if existing.deploy.root != root {
                    tracing::warn!(
                        "the existing config deploys to `{}`, not `{}`; it is left as it is",
                        existing.deploy.root.display(),
                        root.display()
                    );
                }
            }
            // Left as it is; every push and `check` say the same until it is fixed.
            Some(Err(err)) => tracing::warn!("{err:#}; it is left as it is"),
            _ => {}
        }
    }

    for root in &roots {
        let layout = Layout::new(root);
        for dir in [
            layout.releases(),
            layout.shared(),
            layout.state().join("logs"),
            layout.state().join("index"),
        ] {
            if !dir.is_dir() {
                changes.push(Change::CreateDir(dir));
            }
        }
    }
    for env_file in env_files {
        if fs::symlink_metadata(&env_file).is_err() {
            changes.push(Change::CreateEnvFile(env_file));
        }
    }

    Ok(changes)
}

enum HookState {
    Missing,
    Ours { copy: bool },
    Foreign,
}

fn hook_state(path: &Path, exe: &Path) -> Result<HookState> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(HookState::Missing);
    };
    if meta.file_type().is_symlink() {
        let ours = path.canonicalize().is_ok_and(|target| target == exe);
        return Ok(if ours {
            HookState::Ours { copy: false }
        } else {
            HookState::Foreign
        });
    }
    let same = meta.len() == fs::metadata(exe)?.len()
        && fs::read(path).with_context(|| format!("failed to read `{}`", path.display()))?
            == fs::read(exe).with_context(|| format!("failed to read `{}`", exe.display()))?;
    Ok(if same {
        HookState::Ours { copy: true }
    } else {
        HookState::Foreign
    })
}

/// The template, deploying to `root`.
fn config_template(root: &Path) -> String {
    let value = toml::Value::String(root.display().to_string());
    config::EXAMPLE.replacen("root = \"/srv/app\"", &format!("root = {value}"), 1)
}

/// `/srv/app.git` deploys to `/srv/app`.
fn default_root(repo: &Path) -> Result<PathBuf> {
    let name = repo
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(".git") {
        Some(stem) if !stem.is_empty() => Ok(repo.with_file_name(stem)),
        _ => bail!(
            "cannot tell the deploy root from `{}`: pass `--root PATH`",
            repo.display()
        ),
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("failed to resolve `{}`", path.display()))
}

/// Fails unless `path` exists as a folder or can be created: its nearest existing ancestor
/// must be a folder this user may write to.
fn writable_ancestor(path: &Path) -> Result<()> {
    let mut ancestor = path;
    loop {
        match fs::metadata(ancestor) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => bail!(
                "cannot create `{}`: `{}` is not a folder",
                path.display(),
                ancestor.display()
            ),
            Err(_) => match ancestor.parent() {
                Some(parent) => ancestor = parent,
                None => bail!("cannot create `{}`", path.display()),
            },
        }
    }
    if ancestor != path {
        nix::unistd::access(ancestor, AccessFlags::W_OK | AccessFlags::X_OK).with_context(
            || {
                format!(
                    "cannot create `{}`: `{}` is not writable",
                    path.display(),
                    ancestor.display()
                )
            },
        )?;
    }
    Ok(())
}
