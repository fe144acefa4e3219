//! Who may reach the repository: SSH public keys as they are written in `authorized_keys` and
//! `known_hosts`. Uses `sys` only.

pub mod sshkey;
