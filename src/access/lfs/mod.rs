//! Git LFS over SSH, served by ats-hook itself: the objects of a repository's large files kept
//! in its own store (`store`), and git-lfs's SSH transfer protocol (`transfer`, on `pktline`),
//! which the git-lfs client speaks to `git-lfs-transfer PATH upload|download` on the server. No
//! HTTP server is involved: the deploy key and the SSH gate decide who may send and fetch.

pub mod pktline;
pub mod store;
pub mod transfer;

pub use store::{Pointer, Store};
