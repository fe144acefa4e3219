//! Hook mode: what `hooks/post-receive` runs. git feeds the pushed refs on stdin.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Location;
use crate::{deploy, refs, select};

pub fn run(location: &Location, stdin: impl BufRead) -> Result<ExitCode> {
    let updates = refs::parse(stdin)?;
    let (repo, config) = super::open(location)?;
    match select::select(&repo, &config, &updates)? {
        Some(target) => deploy::deploy(&repo, &config, &target),
        None => Ok(ExitCode::SUCCESS),
    }
}
