//! How a child ended, and how the pusher reads it.

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut(Duration),
    Interrupted,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The status a shell would report: the code, or 128+N for signal N.
    pub fn shell_code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(signal) => Some(128 + signal),
            Exit::TimedOut(_) | Exit::Interrupted => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit {code}"),
            Exit::Signal(signal) => {
                let name = Signal::try_from(*signal).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "killed by {name}, exit {}", 128 + signal)
            }
            Exit::TimedOut(limit) => {
                write!(f, "timed out after {}", humantime::format_duration(*limit))
            }
            Exit::Interrupted => f.write_str("interrupted"),
        }
    }
}
