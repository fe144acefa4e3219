//! `ats-hook compose -- ARGS…`: any Compose command (`logs -f web`, `exec web sh`, `ps`, `run
//! --rm web ./manage.py shell`) against the live release's project, files and environment, as
//! the deploy ran them: nobody guesses the project name or the override file.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::state::layout::Layout;
use crate::state::record;

pub fn run(config: &Config, args: &[OsString]) -> Result<ExitCode> {
    let Some(compose) = &config.compose else {
        bail!(
            "`{}` has no `[compose]` section: this app is not run by Docker Compose",
            config.path.display()
        );
    };
    let layout = Layout::new(&config.deploy.root);
    let live = layout
        .live_release()?
        .context("nothing is live yet: push a release first")?;
    let records = record::read_all(&layout.deploys_file())?;
    let (_, env) = crate::steps::live_release_environment(config, &layout, &records, &live)?;
    let project = crate::live::compose::Project::new(compose, &layout);
    Err(project.cmd(&env, args).exec())
}
