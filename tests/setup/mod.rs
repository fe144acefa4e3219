//! Setting a server up and the commands around a deploy: `install`, the Debian package, the
//! smaller commands, and config mistakes reported by line.

mod commands;
mod config_errors;
mod install;
mod package;
