//! `ats-hook exec --env-file FILE -- COMMAND…`: the app server's start, for a systemd unit.
//!
//! `EnvironmentFile=` is read by PID 1, as root, before the unit's `User=` applies: pointed at
//! the deploy user's `shared/.env`, the user could link it to any root-only file. Started
//! through this instead, the file is read by the unit's own user, and the server is then
//! executed in place (same process: `Type=notify`, socket activation and `$MAINPID` hold).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::sys::owner;

pub fn run(env_file: &Path, command: &[OsString]) -> Result<ExitCode> {
    if owner::is_root() {
        if let Some(user) = owner::other_owner(env_file)? {
            bail!(
                "`{}` is `{}`'s: run this as `{}` (the unit's `User=`), never as root",
                env_file.display(),
                user.name,
                user.name
            );
        }
    }
    // Missing, it adds nothing (as `EnvironmentFile=-` did): the server starts all the same.
    let vars = if std::fs::symlink_metadata(env_file).is_ok() {
        crate::steps::read_env_file(env_file)?
    } else {
        Vec::new()
    };
    let (program, args) = command.split_first().context("no command to run")?;
    Err(crate::sys::process::exec(program, args, vars))
}
