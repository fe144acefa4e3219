//! How a release goes live and is judged: health checks, notifications, what journald
//! records of a deploy.

mod compose;
mod handover;
mod handover_proxies;
mod handover_switch;
mod handover_units;
mod handover_workers;
mod health;
mod journald;
mod notify;
