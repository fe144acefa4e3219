//! Per-deploy flags from `git push -o ats.…`, which git hands to the hooks as
//! `GIT_PUSH_OPTION_COUNT` and `GIT_PUSH_OPTION_<n>`; `ats-hook deploy` takes the same as flags.
//!
//! - `ats.skip=<step>`: skip a step the config marks `skippable` (repeatable);
//! - `ats.no-restart`: switch without restarting the app;
//! - `ats.dry-run`: show the plan and deploy nothing (in gate mode, reject the push);
//! - `ats.note=<text>`: a note kept in the history and shown by `log` and `status`;
//! - `ats.force`: deploy even when the app's folder (`deploy.path`) is unchanged.
//!
//! Options outside the `ats.` namespace belong to other hooks and are left alone. An unknown or
//! malformed `ats.` option is an error before anything runs: the push deploys nothing, and in
//! gate mode it is rejected. Values reach steps only as environment variables, never on a
//! command line.

use anyhow::{bail, Context, Result};

use crate::config::Config;

/// The longest note kept, in characters: a line in `log`, not a changelog.
const NOTE_MAX: usize = 500;

/// What a push asked of its deploy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushOptions {
    /// Steps to skip, by name.
    pub skip: Vec<String>,
    pub no_restart: bool,
    pub dry_run: bool,
    pub note: Option<String>,
    /// Deploy even when what the release would hold is what is live.
    pub force: bool,
}

impl PushOptions {
    /// The options git passed to this hook, if any.
    pub fn from_env() -> Result<PushOptions> {
        let Ok(count) = std::env::var("GIT_PUSH_OPTION_COUNT") else {
            return Ok(PushOptions::default());
        };
        let count: usize = count
            .trim()
            .parse()
            .with_context(|| format!("git passed a malformed `GIT_PUSH_OPTION_COUNT={count}`"))?;
        let options = (0..count)
            .map(|n| {
                std::env::var(format!("GIT_PUSH_OPTION_{n}"))
                    .with_context(|| format!("git passed no `GIT_PUSH_OPTION_{n}`"))
            })
            .collect::<Result<Vec<String>>>()?;
        Self::parse(&options)
    }

    /// Reads `ats.` options, in the form `git push -o` takes them.
    pub fn parse(options: &[String]) -> Result<PushOptions> {
        let mut parsed = PushOptions::default();
        for option in options {
            let Some(rest) = option.strip_prefix("ats.") else {
                tracing::debug!("push option `{option}` is not ats-hook's; left alone");
                continue;
            };
            let (name, value) = match rest.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (rest, None),
            };
            // Quoted in messages with its control characters escaped.
            let option = crate::sys::output::printable(option);
            match (name, value) {
                ("skip", Some(step)) if !step.trim().is_empty() => {
                    let step = step.trim().to_string();
                    if !parsed.skip.contains(&step) {
                        parsed.skip.push(step);
                    }
                }
                ("skip", _) => bail!("push option `{option}` needs a step: `-o ats.skip=<step>`"),
                ("no-restart", None) => parsed.no_restart = true,
                ("dry-run", None) => parsed.dry_run = true,
                ("force", None) => parsed.force = true,
                ("no-restart" | "dry-run" | "force", Some(_)) => {
                    bail!("push option `{option}` takes no value: `-o ats.{name}`")
                }
                ("note", Some(note)) => parsed.set_note(note)?,
                ("note", None) => bail!("push option `{option}` needs a text: `-o ats.note=\"…\"`"),
                _ => bail!(
                    "unknown push option `{option}`: ats-hook takes `ats.skip=<step>`, `ats.no-restart`, `ats.dry-run`, `ats.force` and `ats.note=<text>`"
                ),
            }
        }
        Ok(parsed)
    }

    /// Sets the note, refusing an empty, overlong or multi-line one.
    pub fn set_note(&mut self, note: &str) -> Result<()> {
        let note = note.trim();
        if self.note.is_some() {
            bail!("more than one note: pass `ats.note` once");
        }
        if note.is_empty() {
            bail!("the note is empty");
        }
        if note.chars().count() > NOTE_MAX {
            bail!("the note is longer than {NOTE_MAX} characters");
        }
        if note.chars().any(char::is_control) {
            bail!("the note holds a control character (a newline, a tab …): keep it to one line");
        }
        self.note = Some(note.to_string());
        Ok(())
    }

    /// Refuses to skip a step the config does not have, or does not mark `skippable`.
    pub fn check(&self, config: &Config) -> Result<()> {
        for name in &self.skip {
            match config.steps.iter().find(|s| s.name.as_str() == name) {
                None => {
                    let names: Vec<&str> = config.steps.iter().map(|s| s.name.as_str()).collect();
                    bail!(
                        "cannot skip step `{}`: the config has no such step (it has: {})",
                        crate::sys::output::printable(name),
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )
                }
                Some(step) if !step.skippable => bail!(
                    "cannot skip step `{name}`: the config does not mark it `skippable = true`"
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// For a push of several apps: each step to skip must be one that some app has and marks
    /// `skippable` (the apps without it skip nothing).
    pub fn check_apps(&self, configs: &[&Config]) -> Result<()> {
        if let [config] = configs {
            return self.check(config);
        }
        for name in &self.skip {
            let mut steps = configs
                .iter()
                .flat_map(|config| &config.steps)
                .filter(|step| step.name.as_str() == name)
                .peekable();
            if steps.peek().is_none() {
                bail!(
                    "cannot skip step `{}`: no app has such a step",
                    crate::sys::output::printable(name)
                );
            }
            if !steps.any(|step| step.skippable) {
                bail!("cannot skip step `{name}`: no app marks it `skippable = true`");
            }
        }
        Ok(())
    }

    /// Whether the push asks to skip `step`.
    pub fn skips(&self, step: &str) -> bool {
        self.skip.iter().any(|s| s == step)
    }

    /// What the pusher asked for, as the output names it: `skip migrate, no restart`.
    pub fn describe(&self) -> Option<String> {
        let mut parts: Vec<String> = self.skip.iter().map(|s| format!("skip {s}")).collect();
        if self.no_restart {
            parts.push("no restart".into());
        }
        if self.dry_run {
            parts.push("dry run".into());
        }
        if self.force {
            parts.push("force".into());
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(options: &[&str]) -> Result<PushOptions> {
        PushOptions::parse(&options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_in_the_namespace_are_read_and_others_left_alone() {
        let parsed = parse(&[
            "ats.skip=assets",
            "ci.skip",
            "ats.skip=assets",
            "ats.skip=migrate",
            "ats.no-restart",
            "ats.note=hotfix for #12 = urgent",
        ])
        .unwrap();
        assert_eq!(
            parsed,
            PushOptions {
                skip: vec!["assets".into(), "migrate".into()],
                no_restart: true,
                dry_run: false,
                note: Some("hotfix for #12 = urgent".into()),
                force: false,
            }
        );
        assert!(parse(&["ats.dry-run"]).unwrap().dry_run);
        assert!(parse(&["ats.force"]).unwrap().force);
        assert_eq!(parse(&[]).unwrap(), PushOptions::default());
    }

    #[test]
    fn malformed_options_are_refused_with_the_fix() {
        for (options, error) in [
            (vec!["ats.skip"], "needs a step"),
            (vec!["ats.skip="], "needs a step"),
            (vec!["ats.no-restart=yes"], "takes no value"),
            (vec!["ats.dry-run=1"], "takes no value"),
            (vec!["ats.force=yes"], "takes no value"),
            (vec!["ats.note"], "needs a text"),
            (vec!["ats.note=  "], "the note is empty"),
            (vec!["ats.note=a", "ats.note=b"], "more than one note"),
            (vec!["ats.note=a\tb"], "control character"),
            (vec!["ats.restart"], "unknown push option `ats.restart`"),
            (vec!["ats.dry_run"], "unknown push option"),
        ] {
            let err = format!("{:#}", parse(&options).unwrap_err());
            assert!(err.contains(error), "{options:?}: {err}");
        }
        let long = format!("ats.note={}", "x".repeat(NOTE_MAX + 1));
        assert!(parse(&[long.as_str()]).is_err());
    }

    #[test]
    fn a_push_of_several_apps_skips_a_step_some_app_marks_skippable() {
        let path = std::path::Path::new("/srv/app.git/ats-hook.toml");
        let config = |steps: &str| {
            Config::parse(&format!("[deploy]\nroot = \"/srv/x\"\n{steps}"), path).unwrap()
        };
        let backend = config("[[step]]\nname = \"migrate\"\nrun = \"true\"\nskippable = true\n");
        let frontend = config("[[step]]\nname = \"build\"\nrun = \"true\"\n");
        let apps = [&backend, &frontend];
        parse(&["ats.skip=migrate"])
            .unwrap()
            .check_apps(&apps)
            .unwrap();
        for (option, error) in [
            ("ats.skip=build", "no app marks it `skippable = true`"),
            ("ats.skip=deploy", "no app has such a step"),
        ] {
            let err = parse(&[option]).unwrap().check_apps(&apps).unwrap_err();
            assert!(format!("{err:#}").contains(error), "{option}: {err:#}");
        }
        // One app: as for a config of one app.
        let err = parse(&["ats.skip=build"])
            .unwrap()
            .check_apps(&[&frontend])
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("the config does not mark it"),
            "{err:#}"
        );
    }
}
