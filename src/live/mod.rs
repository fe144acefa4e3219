//! How a release goes live and is judged: restarting the app, checking its health, telling
//! others what happened. Uses `state`, `config` and `sys`; knows nothing of the pipeline's
//! order.

pub mod health;
pub mod notify;
pub mod restart;
