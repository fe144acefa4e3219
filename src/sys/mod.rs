//! The ground floor: child processes, /proc, HTTP, work spread over the cores, what is printed
//! and how values are written, and root's careful access to a deploy user's files. It knows nothing of deploys
//! and imports nothing else of the crate.

pub mod files;
#[cfg(test)]
pub mod fuzz;
pub mod http;
pub mod output;
pub mod owner;
pub mod parallel;
pub mod process;
pub mod procs;
pub mod sockets;
