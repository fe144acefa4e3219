//! Faults and floods that must lose nothing, one module per fault: floods of output, a
//! damaged history, killed hooks, a full disk, signals. What a user checks: what the pusher
//! read, what the log kept, the hook's peak memory, the history, what is live.

mod disk;
mod floods;
mod history;
mod kills;
mod signals;
