//! How a release goes live and is judged: the two slots and the proxy of the handover,
//! restarting the app, an app run by Docker Compose, checking its health, telling others what happened. Uses `state`,
//! `config` and `sys`; knows nothing of the pipeline's order.

pub mod compose;
pub mod containers;
pub mod daemon;
pub mod handover;
pub mod health;
pub mod jobs;
pub mod notify;
pub mod proxy;
pub mod restart;
pub mod slots;
pub mod workers;
