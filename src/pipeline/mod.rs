//! The deploy and the rollback as a sequence of stages, and the only place that knows their
//! order: the session around them, making the release, going live, switching back, recovering
//! what a killed run left, the spare release and the plan `check` prints. Uses every part below.

pub mod deploy;
pub mod plan;
pub mod recover;
pub mod spare;
pub mod stop;
