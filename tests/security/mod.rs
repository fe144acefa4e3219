//! The security suite: each attack of SECURITY.md's threat model, tried for real, and what must
//! hold after it: refused with a clear message, nothing written outside the deploy user's own
//! tree, no secret printed.

mod confine;
mod root;
mod screens;
mod secrets;
mod sources;
mod submodules;
mod trees;
mod units;
