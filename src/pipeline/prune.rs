//! What stays on disk: the releases pruning removes (and the one a new release is built from),
//! and the stored builds no kept release links to.
//!
//! The live release and the one a rollback would go to are never removed, and neither is any
//! build they link to, so a rollback always finds its release as it was, dependencies included.
//! Neither is a release or a build that a running process uses (its working directory, an open
//! or mapped file under it): an app server started in an old release keeps it until it leaves.

use std::collections::HashSet;

use anyhow::Result;

use crate::config::Config;
use crate::outputs::Store;
use crate::release;
use crate::state::layout::Layout;
use crate::state::record::{self, DeployRecord};
use crate::sys::output;
use crate::sys::procs::Scan;

/// An old release to build the new one from: the one pruning would remove next, once there
/// are as many releases as are kept (before that, every release is kept and the new one is
/// checked out whole). Never the live release, the rollback target, nor a release a running
/// process uses, which the output names.
pub fn recycle_candidate(
    config: &Config,
    layout: &Layout,
    records: &[DeployRecord],
) -> Result<Option<String>> {
    if !config.deploy.recycle_releases {
        return Ok(None);
    }
    let (on_disk, expendable) = expendable_releases(layout, records, None)?;
    if on_disk < config.deploy.keep_releases {
        return Ok(None);
    }
    // Read from /proc only when there is a release to ask about.
    let scan = std::cell::OnceCell::new();
    for id in expendable {
        if !layout.index_file(&id).is_file() {
            continue;
        }
        if containers_use(config, layout).contains(&id) {
            output::say(format!(
                "not reusing release {id}: a container runs or mounts it"
            ));
            continue;
        }
        let scan = scan.get_or_init(|| Scan::under(&layout.releases()));
        if let Some(users) = scan.describe(&layout.release(&id)) {
            output::say(format!("not reusing release {id}: in use by {users}"));
            continue;
        }
        return Ok(Some(id));
    }
    Ok(None)
}

/// How many releases are on disk, and those that may go, in the order they would go: never
/// the live release, the rollback target, nor `also_kept`.
fn expendable_releases(
    layout: &Layout,
    records: &[DeployRecord],
    also_kept: Option<&str>,
) -> Result<(usize, Vec<String>)> {
    let mut on_disk = layout.release_ids()?;
    record::sort_chronologically(&mut on_disk, records);
    let live = layout.live_release()?;
    let rollback = record::rollback_target(records, live.as_deref(), &on_disk).cloned();
    let mut protected: Vec<&str> = live.iter().map(String::as_str).collect();
    protected.extend(rollback.as_deref());
    protected.extend(also_kept);
    let went_live = |id: &str| record::went_live(records, id);
    let expendable = release::expendable(&on_disk, &protected, &went_live)
        .into_iter()
        .cloned()
        .collect();
    Ok((on_disk.len(), expendable))
}

/// Removes releases beyond `keep_releases`, in the order `expendable_releases` gives, never
/// the release of this run; then the stored builds that no release left on disk links to.
pub fn prune(
    config: &Config,
    layout: &Layout,
    records: &[DeployRecord],
    this_run: &str,
) -> Result<()> {
    release::remove_leftovers(layout)?;
    let (on_disk, expendable) = expendable_releases(layout, records, Some(this_run))?;
    let mut excess = on_disk.saturating_sub(config.deploy.keep_releases);
    // Read from /proc only when something would go: most deploys remove nothing.
    let scan = std::cell::OnceCell::new();
    let scan = || scan.get_or_init(|| Scan::under(layout.root()));
    let mut removed = Vec::new();
    let containers = std::cell::OnceCell::new();
    let containers = || containers.get_or_init(|| containers_use(config, layout));
    for id in expendable {
        if excess == 0 {
            break;
        }
        if containers().contains(&id) {
            output::say(format!(
                "kept old release {id}: a container runs or mounts it"
            ));
            continue;
        }
        if let Some(users) = scan().describe(&layout.release(&id)) {
            output::say(format!("kept old release {id}: in use by {users}"));
            continue;
        }
        release::remove(layout, &id)?;
        removed.push(id);
        excess -= 1;
    }
    if !removed.is_empty() {
        output::say(format!(
            "pruned {} old release(s): {}",
            removed.len(),
            removed.join(", ")
        ));
    }
    if let Some(compose) = &config.compose {
        let kept: std::collections::BTreeSet<String> = layout.release_ids()?.into_iter().collect();
        match crate::live::compose::Project::new(compose, layout).prune(&kept) {
            Ok(images) if !images.is_empty() => output::say(format!(
                "removed {} image(s) of pruned releases: {}",
                images.len(),
                images.join(", ")
            )),
            Ok(_) => {}
            Err(err) => output::warn(format!("pruning the releases' images failed: {err:#}")),
        }
    }
    let store = Store::new(layout);
    let mut used = builds_in_use(config, layout, &store, records)?;
    let unused = store
        .folders()?
        .into_iter()
        .any(|build| !used.contains(&build));
    let by_processes = if unused {
        builds_used_by_processes(layout, scan())
    } else {
        HashSet::new()
    };
    for (step, build) in by_processes {
        if used.insert((step.clone(), build.clone())) {
            let users = scan().describe(&store.build_dir(&step, &build));
            output::say(format!(
                "kept stored build {step}/{build}: in use by {}",
                users.unwrap_or_default()
            ));
        }
    }
    let builds = store.prune(&used)?;
    if !builds.is_empty() {
        output::say(format!(
            "pruned {} stored build(s) no release uses: {}",
            builds.len(),
            builds.join(", ")
        ));
    }
    Ok(())
}

/// The builds (step, build) the releases on disk link to: as their deploys recorded it, and as
/// their links at today's output paths show it, so neither a changed config nor a lost record
/// can free a build a release still runs on.
pub fn builds_in_use(
    config: &Config,
    layout: &Layout,
    store: &Store,
    records: &[DeployRecord],
) -> Result<HashSet<(String, String)>> {
    let mut used = HashSet::new();
    for id in layout.release_ids()? {
        for (step, output) in record::outputs_of(records, &id) {
            used.insert((step.to_string(), output.build.clone()));
        }
        let dir = layout.release(&id);
        for path in config.steps.iter().flat_map(|step| &step.outputs) {
            used.extend(store.build_linked_at(&dir.join(path.as_path())));
        }
    }
    Ok(used)
}

/// The builds (step, build) of the store that running processes use.
fn builds_used_by_processes(layout: &Layout, scan: &Scan) -> HashSet<(String, String)> {
    let Ok(dir) = layout.outputs().canonicalize() else {
        return HashSet::new();
    };
    scan.users()
        .iter()
        .filter_map(|user| {
            let mut parts = user.path.strip_prefix(&dir).ok()?.components();
            let step = parts.next()?.as_os_str().to_str()?.to_string();
            let build = parts.next()?.as_os_str().to_str()?.to_string();
            Some((step, build))
        })
        .collect()
}

/// With `[compose]`: the releases the project's containers run or mount. When Docker cannot be
/// asked, every release counts as used: none is removed from under a container.
fn containers_use(config: &Config, layout: &Layout) -> std::collections::BTreeSet<String> {
    let Some(compose) = &config.compose else {
        return Default::default();
    };
    match crate::live::compose::Project::new(compose, layout).releases_in_use() {
        Ok(used) => used,
        Err(err) => {
            output::warn(format!(
                "cannot ask Docker which releases its containers use: {err:#}"
            ));
            layout
                .release_ids()
                .unwrap_or_default()
                .into_iter()
                .collect()
        }
    }
}
