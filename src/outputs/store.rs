//! The store itself: finding a finished build of a key, building in a workspace that mirrors
//! the release, linking a build into a release, and what the builds take on disk.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::{RelPath, Step};
use crate::release;
use crate::state::layout::Layout;

use super::{Build, Key};

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
