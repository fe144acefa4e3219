//! The deploy and the rollback as a sequence of stages, and the only place that knows their
//! order: the session around them (lock, record), making the release, going live and switching
//! back, recovering what a killed run left, pruning what no release needs, the spare release
//! and the plan `check` prints. Uses every part below it; only the commands use it.

pub mod apps;
mod back;
pub mod boot;
mod checkout;
pub mod deploy;
mod go_live;
mod handover;
pub mod plan;
mod prune;
pub mod recover;
pub mod rollback;
mod session;
pub mod spare;
pub mod stop;

pub use session::Trigger;
