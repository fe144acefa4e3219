//! Reaching the repository over SSH: public keys as `authorized_keys` and `known_hosts` write
//! them, what the SSH gate lets through, and a remote's URL and pinned host keys on the
//! pushing side. Uses `sys` only.

pub mod lfs;
pub mod remote;
pub mod ssh_gate;
pub mod sshkey;
