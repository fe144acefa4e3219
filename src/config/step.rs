//! `[[step]]`: the app's own commands, what they build and what they migrate.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{Duration, RelPath, StepName};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: StepName,
    pub run: String,
    #[serde(default = "default_step_timeout")]
    pub timeout: Duration,
    /// Run once the release is live (restarted and healthy) instead of before the switch:
    /// cache clears, notifications.
    #[serde(default)]
    pub after_switch: bool,
    /// For an `after_switch` step: whether its failure switches back to the previous release.
    #[serde(default)]
    pub rollback_on_failure: bool,
    /// Whether a push may skip it (`git push -o ats.skip=<name>`).
    #[serde(default)]
    pub skippable: bool,
    /// What the step builds (`.venv`, `node_modules`): kept in the output store under a key
    /// made of the step's `run`, these paths, its `inputs` at the pushed commit and its `key`
    /// command's output, and linked into every release with that key. When the key was built
    /// before, the step does not run.
    #[serde(default)]
    pub outputs: Vec<RelPath>,
    /// Files or folders of the commit the outputs are built from (`requirements.txt`,
    /// `package-lock.json`); only with `outputs`.
    #[serde(default)]
    pub inputs: Vec<RelPath>,
    /// A command whose output is part of the key, for what the commit does not hold: the
    /// interpreter's version (`python3 --version`), so a system upgrade rebuilds.
    pub key: Option<String>,
    /// Files or folders of the commit that define the database schema (`migrations/`): their
    /// content is each release's schema fingerprint, which rollbacks compare.
    #[serde(default)]
    pub migrations: Vec<RelPath>,
    /// A command that reverses this step's migrations when a release with another schema goes
    /// live again; run in the release being left, with `ATS_ROLLBACK_FROM` and
    /// `ATS_ROLLBACK_TO` (release ids) and `ATS_ROLLBACK_TO_DIR`.
    pub down: Option<String>,
}

impl Step {
    /// Whether what the step builds is kept in the output store.
    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    fn check_outputs(&self, shared: &[RelPath]) -> Result<()> {
        let name = &self.name;
        if !self.has_outputs() {
            if !self.inputs.is_empty() {
                bail!(
                    "`step.inputs` of step `{name}` needs `outputs`: a step is only skipped when what it built is stored under its inputs; name what it builds (`outputs = [\".venv\"]`), or drop `inputs` and it runs on every deploy"
                );
            }
            if self.key.is_some() {
                bail!("`step.key` of step `{name}` needs `outputs`: it is part of their key");
            }
            return Ok(());
        }
        if self.after_switch {
            bail!("`step.outputs` of step `{name}`: a step with outputs runs before the switch, not with `after_switch`");
        }
        if self.skippable {
            bail!("`step.skippable` of step `{name}`: a step with outputs cannot be skipped, or the release would lack them; it already does not run while its key is unchanged");
        }
        if self.key.as_deref().is_some_and(|key| key.trim().is_empty()) {
            bail!("`step.key` of step `{name}` is empty");
        }
        for path in &self.outputs {
            if let Some(link) = shared.iter().find(|s| s.overlaps(path)) {
                bail!(
                    "`step.outputs`: `{path}` of step `{name}` overlaps the shared path `{link}`"
                );
            }
            if let Some(input) = self.inputs.iter().find(|i| i.overlaps(path)) {
                bail!("`step.inputs`: `{input}` of step `{name}` overlaps its output `{path}`: an input comes from the commit, an output is built");
            }
        }
        Ok(())
    }
}

fn default_step_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(900))
}

/// The checks across steps: names, commands, outputs that overlap, what migrates.
pub(super) fn check_all(steps: &[Step], shared: &[RelPath]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for step in steps {
        if !seen.insert(step.name.as_str()) {
            bail!("`step.name`: two steps are named `{}`", step.name);
        }
        if step.run.trim().is_empty() {
            bail!("`step.run` of step `{}` is empty", step.name);
        }
        step.check_outputs(shared)?;
        if step.down.is_some() && step.migrations.is_empty() {
            bail!(
                "`step.down` of step `{}` needs `migrations`: the paths whose change it reverses",
                step.name
            );
        }
        if !step.migrations.is_empty() && step.after_switch {
            bail!(
                "`step.migrations` of step `{}`: a migrating step runs before the switch, not with `after_switch`",
                step.name
            );
        }
        if step.rollback_on_failure && !step.after_switch {
            bail!(
                "`step.rollback_on_failure` of step `{}` needs `after_switch = true`: a step before the switch never changes what is live",
                step.name
            );
        }
    }
    let mut built: Vec<(&RelPath, &str)> = Vec::new();
    for step in steps {
        for path in &step.outputs {
            if let Some((other, by)) = built.iter().find(|(o, _)| o.overlaps(path)) {
                bail!(
                    "`step.outputs`: `{path}` of step `{}` overlaps `{other}` of step `{by}`",
                    step.name
                );
            }
            built.push((path, step.name.as_str()));
        }
    }
    Ok(())
}
