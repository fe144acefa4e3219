//! How a deploy or rollback that stopped short is told: the state its record gets, and the
//! summary line the pusher reads last, which always says what is live now.

use anyhow::Result;

use crate::state::record::State;
use crate::sys::output;
use crate::sys::process::Exit;

/// Why a deploy stopped short.
pub enum Stop {
    Step {
        name: String,
        exit: Exit,
    },
    Interrupted {
        during: String,
    },
    Error(anyhow::Error),
    /// The new release failed on its own slot, before any user's request reached it.
    Unproven {
        stage: String,
        error: anyhow::Error,
    },
    /// A newer push of the same ref came while this one waited for the lock.
    Superseded(crate::state::queue::Newer),
    /// The push left what the release would hold as it is live (`deploy.path`): `what` names
    /// the folders.
    Unchanged {
        what: String,
        commit: String,
    },
    /// Ready, but another app of the same push failed: no app of it goes live.
    Held {
        by: String,
    },
    /// Something failed once the release was live, and it stays live: going back would put old
    /// code on the schema its migrations changed.
    FailedForward {
        stage: String,
        error: anyhow::Error,
        why: String,
    },
    /// Something failed once the release was live; `current` was switched back (or not).
    AfterSwitch {
        stage: String,
        error: anyhow::Error,
        restored: Result<()>,
        /// The stage failed because ats-hook was asked to stop.
        interrupted: bool,
    },
}

impl From<anyhow::Error> for Stop {
    fn from(error: anyhow::Error) -> Stop {
        Stop::Error(error)
    }
}

impl Stop {
    /// (state, failed step or stage, error) for the record.
    pub fn describe(&self) -> (State, Option<String>, Option<String>) {
        match self {
            Stop::Step { name, exit } => (
                if *exit == Exit::Interrupted {
                    State::Interrupted
                } else {
                    State::Failed
                },
                Some(name.clone()),
                Some(format!("step `{name}` failed ({exit})")),
            ),
            Stop::Interrupted { during } => (
                State::Interrupted,
                None,
                Some(format!("interrupted during {during}")),
            ),
            Stop::Error(err) => (State::Failed, None, Some(format!("{err:#}"))),
            Stop::Unproven { stage, error } => (
                State::Failed,
                Some(stage.clone()),
                Some(format!("{error:#}")),
            ),
            Stop::FailedForward { stage, error, why } => (
                State::FailedForward,
                Some(stage.clone()),
                Some(format!("{error:#}; kept live: {why}")),
            ),
            Stop::Superseded(newer) => (
                State::Superseded,
                None,
                Some(format!("superseded by {}", output::short(&newer.commit))),
            ),
            Stop::Unchanged { what, .. } => (
                State::Unchanged,
                None,
                Some(format!("{what} unchanged: nothing to deploy")),
            ),
            Stop::Held { by } => (
                State::Failed,
                None,
                Some(format!("not switched: app `{by}` of the same push failed")),
            ),
            Stop::AfterSwitch {
                stage,
                error,
                restored,
                interrupted,
            } => (
                if *interrupted {
                    State::Interrupted
                } else if restored.is_ok() {
                    State::RolledBack
                } else {
                    State::Failed
                },
                Some(stage.clone()),
                Some(format!("{error:#}")),
            ),
        }
    }

    /// The summary line for a stop; `what` is `deploy` or `rollback`, `live_now` what
    /// `current` points at once the run is over.
    pub fn summary(self, what: &str, was_live: Option<&str>, live_now: Option<&str>) -> String {
        let still_live = match was_live {
            Some(live) => format!("{live} is still live"),
            None => "nothing is live yet".to_string(),
        };
        match self {
            Stop::Step {
                name,
                exit: Exit::Interrupted,
            } => {
                format!("{what} INTERRUPTED during step {name}; {still_live}")
            }
            Stop::Step { name, exit } => {
                format!("{what} FAILED at step {name} ({exit}); {still_live}")
            }
            Stop::Interrupted { during } => {
                format!("{what} INTERRUPTED during {during}; {still_live}")
            }
            Stop::Error(err) => {
                output::error(format!("{:#}", output::with_disk_full_hint(err)));
                format!("{what} FAILED; {still_live}")
            }
            Stop::Unproven { stage, .. } => format!(
                "{what} FAILED at {stage}, before any request reached it; {still_live}"
            ),
            Stop::FailedForward { stage, why, .. } => {
                output::error(format!("NOT switched back: {why}"));
                format!(
                    "{what} FAILED at {stage} and stays live (failed-forward): fix it with the next push, or reverse the migrations and roll back with `ats-hook rollback --force`"
                )
            }
            Stop::Superseded(newer) if newer.deployed => format!(
                "superseded by {}, which is live now: a newer push of this branch came while this one waited",
                output::short(&newer.commit)
            ),
            Stop::Superseded(newer) => format!(
                "superseded by {}, which deploys next: a newer push of this branch came while this one waited; {still_live}",
                output::short(&newer.commit)
            ),
            Stop::Unchanged { what, commit } => format!(
                "{what} unchanged at {}: nothing to deploy; {}",
                output::short(&commit),
                match was_live {
                    Some(live) => format!("{live} stays live (push with `-o ats.force` to deploy anyway)"),
                    None => "nothing is live".to_string(),
                }
            ),
            Stop::Held { by } => format!(
                "{what} NOT SWITCHED: app {by} of this push failed, and a push's apps go live together or not at all; {still_live}"
            ),
            Stop::AfterSwitch {
                stage,
                restored: Ok(()),
                interrupted,
                ..
            } => {
                let verb = if interrupted {
                    "INTERRUPTED during"
                } else {
                    "FAILED at"
                };
                match was_live {
                    Some(live) => {
                        format!("{what} {verb} {stage}; switched back, {live} is live again")
                    }
                    None => format!("{what} {verb} {stage}; nothing is live"),
                }
            }
            Stop::AfterSwitch {
                stage,
                restored: Err(err),
                ..
            } => {
                output::error(format!("switching back failed too: {err:#}"));
                let current = live_now.unwrap_or("nothing");
                format!("{what} FAILED at {stage}, and so did switching back: `current` is {current}; check the app")
            }
        }
    }
}
