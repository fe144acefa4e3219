//! The schema a release's code expects: a fingerprint of the paths steps declare as
//! `migrations`, taken from the commit's tree (a tree or blob id per path, so any change to a
//! migration changes it). Rollbacks compare fingerprints: old code never goes back onto a
//! schema its migrations did not make, unless a `down` command reverses them or `--force` says
//! the change is backward compatible.

use std::collections::BTreeSet;
use std::path::Path;

use crate::config::{Config, Step};

/// The steps whose migrations define the schema.
pub fn migrating_steps(config: &Config) -> impl Iterator<Item = &Step> {
    config.steps.iter().filter(|s| !s.migrations.is_empty())
}

/// The fingerprint of `tree`'s migrations; `None` when no step declares any. Each path counts
/// with the id of its tree or blob, as a step's `inputs` do in its output key.
pub fn fingerprint(config: &Config, tree: &git2::Tree<'_>) -> Option<String> {
    let parts: Vec<String> = migrating_steps(config)
        .filter_map(|step| {
            crate::outputs::inputs_digest(tree, &step.migrations)
                .map(|digest| format!("{} {digest}", step.name))
        })
        .collect();
    (!parts.is_empty()).then(|| crate::sys::output::short_hash(parts.join("\n").as_bytes()))
}

/// The migration files `from` (a release folder) has and `to` lacks, by path: what a move from
/// `from` to `to` would leave applied.
pub fn lacking(config: &Config, from: &Path, to: &Path) -> Vec<String> {
    let list = |release: &Path| {
        let mut files = BTreeSet::new();
        for step in migrating_steps(config) {
            for path in &step.migrations {
                collect(release, path.as_path(), &mut files);
            }
        }
        files
    };
    let (from, to) = (list(from), list(to));
    from.difference(&to).cloned().collect()
}

fn collect(release: &Path, rel: &Path, out: &mut BTreeSet<String>) {
    let path = release.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                collect(release, &rel.join(entry.file_name()), out);
            }
        }
        Ok(_) => {
            out.insert(rel.display().to_string());
        }
        Err(_) => {}
    }
}
