//! ats-hook's integration tests: real `git push` into bare repositories with the real binary as
//! their hook, asserting what a user would check: files on disk, `current`, the history, and
//! what the pusher read.

mod support;

mod apps;
mod commands;
mod concurrency;
mod config_errors;
mod deps;
mod django;
mod faults;
mod fleet;
mod gate;
mod health;
mod install;
mod journald;
mod layers;
mod notify;
mod options;
mod outputs;
mod package;
mod push;
mod releases;
mod rollback;
mod schema;
mod security;
mod spare;
mod ssh;
mod stdin;
mod steps;
mod submodules;
