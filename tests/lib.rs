//! ats-hook's integration tests: real `git push` into bare repositories with the real binary as
//! their hook, asserting what a user would check: files on disk, `current`, the history, and
//! what the pusher read.

mod support;

mod apps;
mod deps;
mod faults;
mod fleet;
mod jobs;
mod layers;
mod live;
mod monorepo;
mod push;
mod releases;
mod security;
mod setup;
mod ssh;
