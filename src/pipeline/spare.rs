//! The spare release: a checkout of the live commit, prepared in the background once the pusher
//! has its answer, so that the next push builds its release from it (writing only what changed)
//! even before there are `keep_releases` old releases to build from: a new server's first
//! week of pushes costs what later pushes cost.
//!
//! The spare lives at `releases/.spare` (never a release: no id, never live, never a rollback
//! target). It is prepared as `releases/.spare-new` by a detached `ats-hook prepare-spare` and
//! renamed to `.spare` only once whole and on disk; a preparation that is killed or fails
//! leaves `.spare-new`, which the next preparation removes, and nothing uses. Preparing holds
//! `.ats-hook/spare.lock`, not the deploy lock. A push that finds it busy waits for the
//! preparer as long as a whole checkout of this root took when last measured (the history's
//! `checkout_ms`): the preparer started earlier on the same work, so it nearly always ends
//! first, and the push then writes only what changed. Past that, or with nothing measured, the
//! push asks it to stop and checks its tree out whole. The spare is stamped (see `stamps`)
//! before it is named ready, so the push that takes it lists only the folders that moved.
//! A failure is kept in `.ats-hook/spare.json` for `status`.

use std::fs::{self, File};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use git2::{Oid, Repository};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::release;
use crate::release::index::ReleaseIndex;
use crate::release::stamps::Stamps;
use crate::state::layout::Layout;
use crate::state::lock;
use crate::sys::process::{self, Cmd};

/// The spare's id in `releases/` and `.ats-hook/index/`.
pub const SPARE: &str = ".spare";
const PREPARING: &str = ".spare-new";

/// What `status` reads: the spare's commit, or why the last preparation failed.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// The commit the spare holds, when it is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Why the last preparation failed, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
}

fn state_file(layout: &Layout) -> PathBuf {
    layout.state().join("spare.json")
}

fn lock_file(layout: &Layout) -> PathBuf {
    layout.state().join("spare.lock")
}

/// The spare's state as last written.
pub fn state(layout: &Layout) -> State {
    fs::read(state_file(layout))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_state(layout: &Layout, state: &State) -> Result<()> {
    let path = state_file(layout);
    let tmp = path.with_extension("json.new");
    fs::write(&tmp, serde_json::to_vec(state)?)
        .with_context(|| format!("failed to write `{}`", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("failed to write `{}`", path.display()))
}

/// The spare lock, held by whoever prepares, takes or removes the spare. The file holds the
/// preparer's pid, so that a push can ask it to stop.
pub struct SpareLock(Flock<File>);

/// Takes the spare lock if nobody holds it; when a preparer holds it and `ask_to_stop`, asks
/// it to stop.
fn try_lock(layout: &Layout, ask_to_stop: bool) -> Result<Option<SpareLock>> {
    if let Some(locked) = lock::flock(&lock_file(layout), true, std::time::Duration::ZERO)? {
        return Ok(Some(SpareLock(locked)));
    }
    // Someone prepares: ask them to stop, since this push will not wait for them.
    if let Some(pid) = ask_to_stop.then(|| holder(layout).map(|h| h.0)).flatten() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    Ok(None)
}

impl SpareLock {
    /// Writes who holds the lock and since when (`<pid> <unix ms>`), for a push that waits.
    fn note_pid(&mut self, since_ms: u128) -> Result<()> {
        self.0.set_len(0)?;
        self.0.rewind()?;
        write!(self.0, "{} {since_ms}", std::process::id())?;
        Ok(())
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// Who holds the spare lock and since when (unix ms), as it wrote (`note_pid`).
fn holder(layout: &Layout) -> Option<(i32, Option<u128>)> {
    let text = fs::read_to_string(lock_file(layout)).ok()?;
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    Some((pid, words.next().and_then(|w| w.parse().ok())))
}

/// Since when the holder of the spare lock has held it.
fn held_since_ms(layout: &Layout) -> Option<u128> {
    holder(layout)?.1
}

/// Takes the spare lock for the preparer a deploy is about to start, while the deploy lock is
/// still held: the next push, which needs that lock first, then finds the preparation under
/// way and waits for it, instead of finding no spare and checking out whole.
pub fn reserve(config: &Config, layout: &Layout) -> Option<SpareLock> {
    if !wanted(config, layout).unwrap_or(false) {
        return None;
    }
    let mut lock = try_lock(layout, false).ok().flatten()?;
    lock.note_pid(unix_ms()).ok()?;
    Some(lock)
}

/// The spare lock, when this process was started holding it on its stdin (`reserve`).
fn inherited(layout: &Layout) -> Option<SpareLock> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let stdin = File::from(std::io::stdin().as_fd().try_clone_to_owned().ok()?);
    let held = stdin.metadata().ok()?;
    let file = fs::metadata(lock_file(layout)).ok()?;
    if (held.dev(), held.ino()) != (file.dev(), file.ino()) {
        return None;
    }
    // The open file holds the lock already: taking it again on it cannot block.
    Flock::lock(stdin, FlockArg::LockExclusiveNonblock)
        .ok()
        .map(SpareLock)
}

/// The spare, for a new release to be built from, with the lock that keeps it from a
/// preparer until the release has taken it; `None` when there is no whole spare, or its
/// preparation outlasts what a whole checkout costs (the preparer is then asked to stop).
pub fn take(
    config: &Config,
    layout: &Layout,
    records: &[crate::state::record::DeployRecord],
) -> Result<Option<SpareLock>> {
    if !config.deploy.recycle_releases {
        return Ok(None);
    }
    let lock = match try_lock(layout, false)? {
        Some(lock) => lock,
        None => match wait_for_preparer(layout, records)? {
            Some(lock) => lock,
            None => return Ok(None),
        },
    };
    // Whole only if still there under the lock.
    let ready = layout.release(SPARE).is_dir() && layout.index_file(SPARE).is_file();
    if ready {
        // From here on it is the new release's; `status` no longer calls it ready.
        let _ = write_state(layout, &State::default());
        Ok(Some(lock))
    } else {
        Ok(None)
    }
}

/// How long the last whole checkout of this root took, making it durable included (what a
/// preparation does, and what a push does instead of waiting), as the history measured it.
fn whole_checkout_cost(
    records: &[crate::state::record::DeployRecord],
) -> Option<std::time::Duration> {
    records
        .iter()
        .rev()
        .find(|r| r.built_from.is_none() && r.checkout_ms.is_some())
        .map(|r| r.checkout_ms.unwrap_or(0) + r.sync_ms.unwrap_or(0))
        .map(std::time::Duration::from_millis)
}

/// Waits for the preparer at work until it is due to end (half as long again as a whole
/// checkout took here, from when it started): that is cheaper than checking out whole. Past
/// that (or with no measure of it), asks it to stop.
fn wait_for_preparer(
    layout: &Layout,
    records: &[crate::state::record::DeployRecord],
) -> Result<Option<SpareLock>> {
    let Some(cost) = whole_checkout_cost(records) else {
        try_lock(layout, true)?;
        return Ok(None);
    };
    let working = held_since_ms(layout)
        .map(|since| std::time::Duration::from_millis(unix_ms().saturating_sub(since) as u64))
        .unwrap_or_default();
    let budget = (cost * 3 / 2).saturating_sub(working);
    crate::sys::output::say(format!(
        "waiting for the spare release being prepared (up to {}: a whole checkout and its sync took {} here)",
        crate::sys::output::seconds(budget),
        crate::sys::output::seconds(cost)
    ));
    let started = std::time::Instant::now();
    while started.elapsed() < budget && !process::stop_requested() {
        std::thread::sleep(std::time::Duration::from_millis(5));
        if let Some(lock) = try_lock(layout, false)? {
            return Ok(Some(lock));
        }
    }
    // Slower than checking out: this push will not wait longer.
    if let Some(lock) = try_lock(layout, true)? {
        return Ok(Some(lock));
    }
    crate::sys::output::say("the spare release is not ready: checking the tree out whole");
    Ok(None)
}

/// Whether the next push would find no old release to build from, nor a live release to
/// snapshot: then a spare saves it a full checkout.
fn wanted(config: &Config, layout: &Layout) -> Result<bool> {
    if !config.deploy.recycle_releases || layout.release_ids()?.len() >= config.deploy.keep_releases
    {
        return Ok(false);
    }
    Ok(!layout
        .live_release()?
        .is_some_and(|live| release::snapshot::serves(&config.deploy, layout, &live)))
}

/// After a deploy, with the deploy lock released: starts a detached preparer of a spare for
/// `commit` (the live one) when the next push would need it and none holds that commit yet;
/// removes a spare that is no longer needed. Never fails the deploy.
pub fn after_deploy(
    config: &Config,
    layout: &Layout,
    repo: &Path,
    commit: &str,
    reserved: Option<SpareLock>,
) {
    let outcome = (|| -> Result<()> {
        if !wanted(config, layout)? {
            drop(reserved);
            return discard(layout);
        }
        if state(layout).commit.as_deref() == Some(commit) && layout.release(SPARE).is_dir() {
            return Ok(());
        }
        let mut cmd = Cmd::ats_hook()?
            .arg("prepare-spare")
            .arg("--repo")
            .arg(repo)
            .arg("--config")
            .arg(&config.path);
        cmd = cmd.args(config.app_args());
        let cmd = cmd.arg(commit);
        let pid = match reserved {
            Some(lock) => {
                let handed = lock
                    .0
                    .try_clone()
                    .context("failed to share the spare lock")?;
                let pid = cmd.spawn_detached_holding(handed)?;
                // Letting go of it here would unlock it for the preparer too: this process
                // only closes its copy, when it exits.
                std::mem::forget(lock);
                pid
            }
            None => cmd.spawn_detached()?,
        };
        tracing::debug!(
            pid,
            "preparing a spare release of {commit} in the background"
        );
        Ok(())
    })();
    if let Err(err) = outcome {
        tracing::warn!("no spare release for the next push: {err:#}");
    }
}

/// Removes the spare (when nobody is preparing one): once old releases can be built from, it
/// only takes space.
fn discard(layout: &Layout) -> Result<()> {
    if !layout.release(SPARE).exists() && !layout.release(PREPARING).exists() {
        return Ok(());
    }
    let Some(_lock) = try_lock(layout, false)? else {
        return Ok(());
    };
    for id in [SPARE, PREPARING] {
        remove(layout, id)?;
    }
    write_state(layout, &State::default())
}

fn remove(layout: &Layout, id: &str) -> Result<()> {
    let dir = layout.release(id);
    if dir.exists() {
        release::snapshot::remove_folder(&dir)?;
    }
    let _ = fs::remove_file(layout.index_file(id));
    let _ = fs::remove_file(layout.stamps_file(id));
    Ok(())
}

/// `ats-hook prepare-spare`: the detached preparer.
pub fn prepare(repo_dir: &Path, config: &Config, commit: &str) -> Result<()> {
    process::install_signal_handlers()?;
    let layout = Layout::new(&config.deploy.root);
    // A preparer for an older commit may still be finishing (a push asked it to stop).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut since = unix_ms();
    let mut lock = if let Some(lock) = inherited(&layout) {
        // Held since the deploy reserved it: a waiting push counts from then.
        since = held_since_ms(&layout).unwrap_or(since);
        lock
    } else {
        loop {
            if let Some(lock) = try_lock(&layout, false)? {
                break lock;
            }
            if std::time::Instant::now() > deadline || process::stop_requested() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    lock.note_pid(since)?;
    // Only for what is live now: a later push started a preparer of its own.
    if !is_live(&layout, commit)? {
        return Ok(());
    }
    let outcome = prepare_locked(repo_dir, config, &layout, commit).map_err(|err| {
        // The hint reads the cause from the error's chain, so it goes on before the message
        // is flattened for `status`.
        let err = crate::sys::output::with_disk_full_hint(err);
        let _ = remove(&layout, PREPARING);
        let mut state = state(&layout);
        state.failed = Some(format!("{err:#}"));
        state.failed_at = Some(crate::sys::output::rfc3339(std::time::SystemTime::now()));
        let _ = write_state(&layout, &state);
        err
    });
    drop(lock);
    outcome?;
    stamp_when_settled(&layout, commit)
}

/// The longest pause for stamps that a preparer takes while holding the spare lock.
pub const SHORT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// On a filesystem of coarse times, stamps the spare's folders once their times are old enough
/// to be trusted (see `stamps`), without the lock held meanwhile: a push that takes the spare
/// before lists every folder, and one that comes during the wait finds the spare free.
fn stamp_when_settled(layout: &Layout, commit: &str) -> Result<()> {
    let racy = crate::release::stamps::racy_window(layout);
    if racy <= SHORT_PAUSE || layout.stamps_file(SPARE).is_file() {
        return Ok(());
    }
    let settled = std::time::Instant::now() + racy;
    while std::time::Instant::now() < settled {
        if process::stop_requested() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let Some(_lock) = try_lock(layout, false)? else {
        return Ok(());
    };
    if state(layout).commit.as_deref() != Some(commit) || !layout.release(SPARE).is_dir() {
        return Ok(());
    }
    let index = ReleaseIndex::load(&layout.index_file(SPARE))?;
    if index.commit.to_string() != commit {
        return Ok(());
    }
    Stamps::record(
        &layout.release(SPARE),
        index.folders().iter().map(Vec::as_slice),
        &layout.stamps_file(SPARE),
        racy,
    )
}

/// Whether `commit` is what `current` holds, as the history says.
fn is_live(layout: &Layout, commit: &str) -> Result<bool> {
    let Some(live) = layout.live_release()? else {
        return Ok(false);
    };
    let records = crate::state::record::read_all(&layout.deploys_file())?;
    Ok(crate::state::record::live_record(&records, &live).is_some_and(|r| r.commit == commit))
}

fn prepare_locked(repo_dir: &Path, config: &Config, layout: &Layout, commit: &str) -> Result<()> {
    remove(layout, PREPARING)?;
    if !wanted(config, layout)? {
        return Ok(());
    }
    let id = Oid::from_str(commit).with_context(|| format!("`{commit}` is not a commit id"))?;
    let repo = Repository::open_bare(repo_dir)
        .with_context(|| format!("failed to open `{}`", repo_dir.display()))?;
    release::view::in_memory_writes(&repo)?;
    // In gate mode, git moves the pushed objects out of quarantine only once the hook is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while repo.find_commit(id).is_err() {
        if std::time::Instant::now() > deadline || process::stop_requested() {
            anyhow::bail!("commit `{commit}` did not become readable");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let submodules = config.deploy.submodules;
    if submodules {
        crate::release::submodules::attach(&repo, layout, &config.deploy.submodule_urls, id)?;
    }
    let reading = release::Reading::new(&config.deploy, &repo);
    let trees = reading.trees(&repo);
    let old = layout
        .release(SPARE)
        .is_dir()
        .then(|| release::readable_index(trees, layout, SPARE).ok())
        .flatten();
    // The old spare was whole on disk: what was written since is all there is to write out.
    let written = if let Some(old) = old {
        // The old spare, brought to the new commit: only what changed is written.
        let source = release::Source {
            folder: SPARE,
            index: old,
            snapshot_of: None,
        };
        release::update(trees, layout, source, PREPARING, id, &[], &[])?.paths
    } else {
        remove(layout, SPARE)?;
        release::materialize(
            trees,
            id,
            &layout.release(PREPARING),
            &layout.index_file(PREPARING),
            config.deploy.snapshot_releases,
        )?
        .paths
    };
    if process::stop_requested() {
        anyhow::bail!("stopped: a push came");
    }
    // Whole on disk before it is called ready.
    release::durable::make_durable(layout, PREPARING, Some(&written))?;
    // Stamped before it is named ready when the filesystem's tick allows a short pause: the
    // push that takes it then lists only the folders that moved.
    Stamps::record_when_settled(layout, PREPARING, SHORT_PAUSE)?;
    fs::rename(layout.index_file(PREPARING), layout.index_file(SPARE))
        .context("failed to name the spare's index")?;
    let _ = fs::rename(layout.stamps_file(PREPARING), layout.stamps_file(SPARE));
    fs::rename(layout.release(PREPARING), layout.release(SPARE))
        .context("failed to name the spare")?;
    write_state(
        layout,
        &State {
            commit: Some(commit.to_string()),
            ..State::default()
        },
    )
}
