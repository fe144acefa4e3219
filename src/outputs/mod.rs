//! The output store: what steps build (a virtualenv, `node_modules`), kept once per key and
//! linked into every release that needs it.
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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{RelPath, Step};
use crate::release;
use crate::state::layout::Layout;
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

/// The store under a deploy root.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A build folder being built in, mirroring the release.
#[derive(Debug)]
pub struct Workspace {
    pub dir: PathBuf,
    step: String,
    build: String,
    outputs: Vec<RelPath>,
    /// Folders that are real in the mirror: the root and every folder above an output.
    folders: BTreeSet<PathBuf>,
    /// The mirror's symlinks into the release.
    mirror: Vec<PathBuf>,
}

impl Store {
    pub fn new(layout: &Layout) -> Store {
        Store {
            dir: layout.outputs(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn step_dir(&self, step: &str) -> PathBuf {
        self.dir.join(step)
    }

    pub fn build_dir(&self, step: &str, build: &str) -> PathBuf {
        self.step_dir(step).join(build)
    }

    fn key_file(&self, step: &str, key: &str) -> PathBuf {
        self.step_dir(step).join(format!("{key}.json"))
    }

    /// The finished build of `key`, if there is one and all its outputs are there.
    pub fn find(&self, step: &Step, key: &Key) -> Result<Option<Build>> {
        let path = self.key_file(step.name.as_str(), &key.digest);
        let text = match fs::read_to_string(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.with_context(|| format!("failed to read `{}`", path.display()))?,
        };
        let build: Build = match serde_json::from_str(&text) {
            Ok(build) => build,
            Err(err) => {
                crate::sys::output::warn(format!(
                    "`{}` is damaged ({err}); building again",
                    path.display()
                ));
                remove_file(&path)?;
                return Ok(None);
            }
        };
        let dir = self.build_dir(&build.step, &build.build);
        if let Some(missing) = step
            .outputs
            .iter()
            .find(|o| fs::symlink_metadata(dir.join(o.as_path())).is_err())
        {
            crate::sys::output::warn(format!(
                "the stored build `{}` lacks `{missing}`; building again",
                dir.display()
            ));
            remove_file(&path)?;
            return Ok(None);
        }
        Ok(Some(build))
    }

    /// A new build folder for `step`, named `build`, mirroring `release`.
    pub fn prepare(&self, step: &Step, build: &str, release: &Path) -> Result<Workspace> {
        let dir = self.build_dir(step.name.as_str(), build);
        if fs::symlink_metadata(&dir).is_ok() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("failed to remove `{}`", dir.display()))?;
        }
        fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create `{}`", dir.display()))?;
        let mut folders = BTreeSet::from([PathBuf::new()]);
        for output in &step.outputs {
            let mut parent = output.as_path().parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                folders.insert(p.to_path_buf());
                parent = p.parent();
            }
        }
        let mut workspace = Workspace {
            dir,
            step: step.name.to_string(),
            build: build.to_string(),
            outputs: step.outputs.clone(),
            folders,
            mirror: Vec::new(),
        };
        // Parents sort before their children.
        for folder in &workspace.folders {
            let target = workspace.dir.join(folder);
            fs::create_dir_all(&target)
                .with_context(|| format!("failed to create `{}`", target.display()))?;
            let source = release.join(folder);
            match fs::symlink_metadata(&source) {
                Err(_) => continue,
                Ok(meta) if !meta.is_dir() => bail!(
                    "cannot build the outputs of step `{}`: `{}` is not a folder of the release",
                    step.name,
                    folder.display()
                ),
                Ok(_) => {}
            }
            for entry in fs::read_dir(&source)
                .with_context(|| format!("failed to list `{}`", source.display()))?
            {
                let entry =
                    entry.with_context(|| format!("failed to list `{}`", source.display()))?;
                let rel = folder.join(entry.file_name());
                if workspace.folders.contains(&rel) || workspace.is_output(&rel) {
                    continue;
                }
                std::os::unix::fs::symlink(entry.path(), workspace.dir.join(&rel))
                    .with_context(|| format!("failed to mirror `{}`", rel.display()))?;
                workspace.mirror.push(rel);
            }
        }
        Ok(workspace)
    }

    /// Ends a build that succeeded: removes the mirror and anything else written beside the
    /// outputs, checks the outputs are there, makes them durable, and records the build under
    /// its key. Returns the paths that were removed from beside the outputs.
    pub fn finish(&self, workspace: Workspace, build: &Build) -> Result<Vec<String>> {
        for rel in &workspace.mirror {
            let path = workspace.dir.join(rel);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                remove_file(&path)?;
            }
        }
        let mut strays = Vec::new();
        for folder in &workspace.folders {
            let dir = workspace.dir.join(folder);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.with_context(|| format!("failed to list `{}`", dir.display()))?;
                let rel = folder.join(entry.file_name());
                if workspace.folders.contains(&rel) || workspace.is_output(&rel) {
                    continue;
                }
                release::remove_any(&entry.path())?;
                strays.push(rel.display().to_string());
            }
        }
        strays.sort();
        for output in &workspace.outputs {
            if fs::symlink_metadata(workspace.dir.join(output.as_path())).is_err() {
                bail!(
                    "step `{}` succeeded but did not build its output `{output}`",
                    workspace.step
                );
            }
        }
        release::make_durable(&workspace.dir)?;
        let path = self.key_file(&workspace.step, &build.key);
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(build).context("failed to encode the build")?;
        let mut file = fs::File::create(&tmp)
            .with_context(|| format!("failed to create `{}`", tmp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("failed to write `{}`", tmp.display()))?;
        fs::rename(&tmp, &path)
            .with_context(|| format!("failed to record the build in `{}`", path.display()))?;
        sync_dir(&self.step_dir(&workspace.step))?;
        Ok(strays)
    }

    /// Removes the folder of a build that did not succeed.
    pub fn discard(&self, workspace: Workspace) {
        let _ = fs::remove_dir_all(&workspace.dir);
        tracing::debug!(
            step = workspace.step,
            build = workspace.build,
            "discarded an unfinished build"
        );
    }

    /// Links the outputs of `build` into `release`. Returns a note for each tracked path the
    /// links replaced.
    pub fn link(&self, build: &Build, release: &Path) -> Result<Vec<String>> {
        let dir = self.build_dir(&build.step, &build.build);
        let mut notes = Vec::new();
        for output in &build.outputs {
            let rel = RelPath::new(output)?;
            if release::link_path(release, &rel, &dir.join(output))? {
                notes.push(format!(
                    "{}: tracked `{output}` replaced by the link to its build",
                    build.step
                ));
            }
        }
        Ok(notes)
    }

    /// Every finished build, oldest first.
    pub fn list(&self) -> Result<Vec<Build>> {
        let mut builds = Vec::new();
        for step_dir in list_dir(&self.dir)? {
            for path in list_dir(&step_dir)? {
                if path.extension().is_some_and(|e| e == "json") {
                    if let Some(build) = fs::read_to_string(&path)
                        .ok()
                        .and_then(|text| serde_json::from_str::<Build>(&text).ok())
                    {
                        builds.push(build);
                    }
                }
            }
        }
        builds.sort_by(|a, b| a.built_at.cmp(&b.built_at).then(a.build.cmp(&b.build)));
        Ok(builds)
    }

    /// Every build folder, finished or not, as (step, build).
    pub fn folders(&self) -> Result<Vec<(String, String)>> {
        let mut folders = Vec::new();
        for step_dir in list_dir(&self.dir)? {
            for path in list_dir(&step_dir)? {
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    folders.push((file_name(&step_dir), file_name(&path)));
                }
            }
        }
        Ok(folders)
    }

    /// The disk the store takes, in bytes (each file once, however many links it has).
    pub fn disk_usage(&self) -> Result<u64> {
        disk_usage_of(&[&self.dir])
    }

    /// Removes the builds no release in `used` (step, build) links to, and the folders of
    /// unfinished builds. Returns what went, as `step/build`.
    pub fn prune(&self, used: &HashSet<(String, String)>) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for step_dir in list_dir(&self.dir)? {
            let step = file_name(&step_dir);
            let mut finished = HashSet::new();
            for path in list_dir(&step_dir)? {
                if !path.extension().is_some_and(|e| e == "json") {
                    continue;
                }
                let build = fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| serde_json::from_str::<Build>(&text).ok());
                match build {
                    Some(build) if used.contains(&(step.clone(), build.build.clone())) => {
                        finished.insert(build.build);
                    }
                    // Unused, or damaged: the record goes first, so a build is never found
                    // half removed.
                    _ => remove_file(&path)?,
                }
            }
            for path in list_dir(&step_dir)? {
                let name = file_name(&path);
                let is_folder = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if !is_folder
                    || finished.contains(&name)
                    || used.contains(&(step.clone(), name.clone()))
                {
                    continue;
                }
                fs::remove_dir_all(&path)
                    .with_context(|| format!("failed to remove `{}`", path.display()))?;
                removed.push(format!("{step}/{name}"));
            }
            // Gone when empty; an error only means it is not.
            let _ = fs::remove_dir(&step_dir);
        }
        Ok(removed)
    }

    /// The (step, build) a symlink at `link` points to, when it points into this store.
    pub fn build_linked_at(&self, link: &Path) -> Option<(String, String)> {
        let target = fs::read_link(link).ok()?;
        let rest = target.strip_prefix(&self.dir).ok()?;
        let mut parts = rest.components();
        let step = parts.next()?.as_os_str().to_string_lossy().into_owned();
        let build = parts.next()?.as_os_str().to_string_lossy().into_owned();
        Some((step, build))
    }
}

impl Workspace {
    fn is_output(&self, rel: &Path) -> bool {
        self.outputs.iter().any(|o| o.as_path() == rel)
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("failed to list `{}`", dir.display()))?,
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(
            entry
                .with_context(|| format!("failed to list `{}`", dir.display()))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("failed to remove `{}`", path.display()))
        }
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("failed to sync `{}`", dir.display()))
}

/// The disk the files under `paths` take, in bytes: each file once, however many links it has,
/// symlinks not followed.
pub fn disk_usage_of(paths: &[&Path]) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for path in paths {
        total += disk_usage(path, &mut seen)?;
    }
    Ok(total)
}

fn disk_usage(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        other => other.with_context(|| format!("failed to stat `{}`", path.display()))?,
    };
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(0);
    }
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for child in list_dir(path)? {
            total += disk_usage(&child, seen)?;
        }
    }
    Ok(total)
}
