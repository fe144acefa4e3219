//! The output store: what steps build (a virtualenv, `node_modules`), kept once per key and
//! linked into every release that needs it. Uses `release` (to link and make durable),
//! `state`, `config` and `sys`.
//!
//! ```text
//! <root>/outputs/<step>/<key>.json   a finished build of that key: written last, atomically,
//!                                    so that only a build that succeeded is ever found
//! <root>/outputs/<step>/<build>/     the build: the step's outputs, at their final paths
//! ```
//!
//! The key is a SHA-256 of what determines the outputs: the step's `run`, its output paths, its
//! inputs at the pushed commit (git's ids of their blobs and trees), and the output of its
//! `key` command. A release links each output path to the build of its key, so a push with an
//! unchanged lockfile gets its environment in the time of a symlink, a rollback brings back
//! exactly what its release ran with, and a build never changes what a release already uses:
//! a new key is a new folder.
//!
//! A build runs where it stays, because what it makes may name its own absolute path (the
//! console scripts of a virtualenv start with `#!<venv>/bin/python`). So the step runs in the
//! build folder, which mirrors the release with one symlink per entry beside the outputs'
//! paths; the mirror's links are removed once the step is done. A build folder is named after
//! the deploy that made it and never serves another attempt: a build that failed, timed out or
//! was killed (its deploy included) has no `.json`, is never found, and goes at the next
//! prune; an orphaned process of it that still writes cannot reach a later build.

mod store;

pub use store::{disk_usage_of, Store, Workspace};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{RelPath, Step};
use crate::sys::process::{Cmd, Exit};

/// A finished build, as its `<key>.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Build {
    pub step: String,
    pub key: String,
    /// The build's folder: the id of the deploy that built it.
    pub build: String,
    pub outputs: Vec<String>,
    /// The inputs at the commit it was built from, as `path@id` words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
    /// What the step's `key` command printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_output: Option<String>,
    pub run: String,
    pub built_at: String,
    pub duration_ms: u64,
}

impl Build {
    pub fn short_key(&self) -> &str {
        short(&self.key)
    }
}

/// What determines a step's outputs at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub digest: String,
    pub inputs: Option<String>,
    pub key_output: Option<String>,
}

impl Key {
    /// The key of `step` at the commit whose tree is `tree`; `key_output` is what its `key`
    /// command printed.
    pub fn of(step: &Step, tree: &git2::Tree<'_>, key_output: Option<String>) -> Key {
        let inputs = inputs_digest(tree, &step.inputs);
        let mut hash = Sha256::new();
        // Each part is length-prefixed, so no two different keys share a text.
        let mut part = |label: &str, text: &str| {
            hash.update(format!("{label} {}\n", text.len()));
            hash.update(text);
            hash.update("\n");
        };
        part("ats-hook outputs", "1");
        part("run", &step.run);
        for output in &step.outputs {
            part("output", &output.to_string());
        }
        part("inputs", inputs.as_deref().unwrap_or(""));
        part("key", key_output.as_deref().unwrap_or(""));
        Key {
            digest: format!("{:x}", hash.finalize()),
            inputs,
            key_output,
        }
    }

    pub fn short(&self) -> &str {
        short(&self.digest)
    }
}

fn short(key: &str) -> &str {
    crate::sys::output::prefix(key, 12)
}

/// What a step's declared inputs are at a commit: each path with the id of its blob or tree
/// (`-` when absent), so equal text means equal content. `None` for a step without inputs.
pub fn inputs_digest(tree: &git2::Tree<'_>, inputs: &[RelPath]) -> Option<String> {
    if inputs.is_empty() {
        return None;
    }
    let parts: Vec<String> = inputs
        .iter()
        .map(|input| {
            let id = tree
                .get_path(input.as_path())
                .map(|e| e.id().to_string())
                .unwrap_or_else(|_| "-".into());
            format!("{input}@{id}")
        })
        .collect();
    Some(parts.join(" "))
}

/// The inputs a commit lacks (a typo in the config, or a file not committed).
pub fn missing_inputs<'a>(step: &'a Step, tree: &git2::Tree<'_>) -> Vec<&'a RelPath> {
    step.inputs
        .iter()
        .filter(|input| tree.get_path(input.as_path()).is_err())
        .collect()
}

/// What a step's key covers besides its command, for messages: "requirements.txt and
/// `python3 --version`".
pub fn describe_key(step: &Step) -> String {
    let mut parts: Vec<String> = step.inputs.iter().map(ToString::to_string).collect();
    if let Some(command) = &step.key {
        parts.push(format!("`{command}`"));
    }
    match parts.len() {
        0 => "its command".to_string(),
        1 => parts.remove(0),
        _ => {
            let last = parts.pop().unwrap_or_default();
            format!("{} and {last}", parts.join(", "))
        }
    }
}

/// The most a `key` command may print.
const MAX_KEY_OUTPUT: usize = 64 << 10;

/// Whether a variable of the deploy's environment stays away from `key` commands: what picks
/// the program that runs (`PATH`) or the code it loads (`LD_PRELOAD`, `LD_LIBRARY_PATH`). A
/// key command names a tool of the server's (`python3 --version`), and `check` runs it too.
fn kept_from_key_commands(name: &str) -> bool {
    name == "PATH" || name.starts_with("LD_")
}

/// Runs a step's `key` command in `dir`: its output, trimmed, or how it failed with its last
/// lines. It gets the deploy's environment except for `PATH` and `LD_*`, which stay the
/// server's own.
pub fn run_key_command(
    command: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Result<String, (Exit, Vec<String>)>> {
    let mut text = String::new();
    let finished = Cmd::shell(command)
        .dir(dir)
        .envs(env.iter().filter(|(name, _)| !kept_from_key_commands(name)))
        .timeout(timeout)
        .stream(&mut |line| {
            if text.len() <= MAX_KEY_OUTPUT {
                text.push_str(line);
                text.push('\n');
            }
        })
        .with_context(|| format!("key command `{command}` could not run"))?;
    if text.len() > MAX_KEY_OUTPUT {
        bail!(
            "key command `{command}` printed more than {}: it should print a version or a digest, not a file",
            crate::sys::output::size(MAX_KEY_OUTPUT as u64)
        );
    }
    if finished.exit.success() {
        Ok(Ok(text.trim().to_string()))
    } else {
        Ok(Err((finished.exit, finished.tail)))
    }
}
