//! Hook mode: what `hooks/post-receive` and `hooks/pre-receive` run. git feeds the pushed refs
//! on stdin. In pre-receive (gate mode) the pushed objects are still in git's quarantine, which
//! opening the repository from git's environment takes care of, and a failed deploy's exit
//! status makes git reject the push.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Location;
use crate::deploy::Trigger;
use crate::{deploy, refs, select};

pub fn run(location: &Location, trigger: Trigger, stdin: impl BufRead) -> Result<ExitCode> {
    let updates = refs::parse(stdin)?;
    let (repo, config) = super::open(location)?;
    match select::select(&repo, &config, &updates)? {
        Some(target) => deploy::deploy(&repo, &config, &target, trigger),
        None => Ok(ExitCode::SUCCESS),
    }
}
