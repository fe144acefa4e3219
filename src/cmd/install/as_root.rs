//! `install` run by root for a deploy user: root makes only what the user cannot (the
//! repository's or the deploy root's folder in a folder of root's, such as `/srv`) and gives
//! root's leftovers in them to the user, through `owner` alone; then it runs install again as
//! the user, which does all the rest. Nothing here opens a file in the user's tree.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use nix::unistd::User;

use super::{absolute, default_root, Options};
use crate::sys::owner;

/// What root does for one of the two folders.
enum Prep {
    /// Nothing: it is the user's, or the user may create it.
    Nothing,
    /// Create it (a missing folder in a folder of root's) and give it to the user.
    Create { path: PathBuf, real: PathBuf },
    /// Give what root owns in it to the user.
    Give { path: PathBuf, entries: usize },
}

pub(super) fn run(options: &Options<'_>, user: &User, out: &mut dyn Write) -> Result<ExitCode> {
    let repo = absolute(options.repo)?;
    // Root's own file, read as root (the user may not be able to read it), checked by the
    // user's part before it is put in place.
    let config = match options.config {
        Some(path) if path != Path::new("-") => {
            if let Some(other) = owner::other_owner(path)? {
                bail!(
                    "`{}` is in a folder that `{}` can change: give install a config of root's (say, in `/etc/ats-hook/`)",
                    path.display(),
                    other.name
                );
            }
            Some(
                std::fs::read(path)
                    .with_context(|| format!("failed to read `{}`", path.display()))?,
            )
        }
        Some(_) => Some(
            std::io::read_to_string(std::io::stdin())
                .context("failed to read the config from stdin")?
                .into_bytes(),
        ),
        None => None,
    };
    // A config of several apps names their deploy roots; else `--root` (or the default) is it.
    let app_roots = config
        .as_deref()
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| {
            crate::config::Apps::parse(text, &repo.join(crate::config::FILE_NAME)).ok()
        })
        .filter(crate::config::Apps::several)
        .map(|apps| {
            apps.list
                .into_iter()
                .map(|app| app.config.deploy.root)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let root = match (options.root, app_roots.first()) {
        (Some(root), _) => absolute(root)?,
        (None, Some(first)) => first.clone(),
        (None, None) => default_root(&repo)?,
    };
    // All are worked out before any is touched.
    let give = options.user.is_some();
    let mut preps = vec![plan(&repo, user, give)?];
    for root in std::iter::once(&root).chain(app_roots.iter().filter(|r| **r != root)) {
        preps.push(plan(root, user, give)?);
    }
    let mut prepared = false;
    for prep in &preps {
        let verb = if options.dry_run { "would" } else { "did" };
        match prep {
            Prep::Nothing => {}
            Prep::Create { path, real } => {
                if options.dry_run {
                    prepared = true;
                } else {
                    owner::create_folder_for(real, user)?;
                }
                writeln!(
                    out,
                    "{verb} create `{}` for `{}`",
                    path.display(),
                    user.name
                )?;
            }
            Prep::Give { path, entries } => {
                if !options.dry_run {
                    let done =
                        owner::chown_tree(path, user.uid.as_raw(), user.gid.as_raw(), false)?;
                    for link in &done.skipped_links {
                        tracing::warn!(
                            "`{}` has other names (a hard link): its owner is left as it is",
                            link.display()
                        );
                    }
                }
                writeln!(
                    out,
                    "{verb} give `{}` to `{}` ({entries} entries)",
                    path.display(),
                    user.name
                )?;
            }
        }
    }
    out.flush()?;

    let hook = options
        .hook
        .to_possible_value()
        .expect("hook kinds have names");
    let mut args: Vec<OsString> = vec![
        "install".into(),
        "--repo".into(),
        repo.into(),
        "--root".into(),
        root.into(),
        "--hook".into(),
        hook.get_name().into(),
    ];
    for (set, flag) in [
        (options.copy, "--copy"),
        (options.dry_run, "--dry-run"),
        (prepared, "--prepared"),
        (config.is_some(), "--config=-"),
    ] {
        if set {
            args.push(flag.into());
        }
    }
    let status = owner::run_as(user, &args, config.as_deref())?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What root must do for `path` so that `user` can set the rest up. `give`: the admin named
/// the user, so what root owns there becomes the user's.
fn plan(path: &Path, user: &User, give: bool) -> Result<Prep> {
    if std::fs::symlink_metadata(path).is_ok() {
        if !std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            // Not a folder: the user's part says what it is.
            return Ok(Prep::Nothing);
        }
        let owner = owner::owner_of(&owner::open_folder(path)?)?;
        if owner != 0 && owner != user.uid.as_raw() {
            let other = nix::unistd::User::from_uid(owner.into())
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {owner}"), |u| u.name);
            bail!(
                "`{}` belongs to `{other}`, not to `{}`: one deploy user per app, owning nothing else",
                path.display(),
                user.name
            );
        }
        if !give {
            return Ok(Prep::Nothing);
        }
        let entries = owner::chown_tree(path, user.uid.as_raw(), user.gid.as_raw(), true)?.changed;
        return Ok(if entries == 0 {
            Prep::Nothing
        } else {
            Prep::Give {
                path: path.to_path_buf(),
                entries,
            }
        });
    }
    // Missing: the user fills its own folders; root makes it only in a folder of root's.
    let mut nearest = path;
    while std::fs::symlink_metadata(nearest).is_err() {
        nearest = nearest.parent().unwrap_or(Path::new("/"));
    }
    let meta = std::fs::metadata(nearest)
        .with_context(|| format!("failed to read `{}`", nearest.display()))?;
    if !meta.is_dir() {
        bail!(
            "cannot create `{}`: `{}` is not a folder",
            path.display(),
            nearest.display()
        );
    }
    if meta.uid() == user.uid.as_raw() {
        return Ok(Prep::Nothing);
    }
    Ok(Prep::Create {
        path: path.to_path_buf(),
        real: owner::trusted_path(path)?,
    })
}
