//! What the deploy root knows and a push asks for: where everything sits (`layout`), the
//! history (`record`), the lock and the queue before it, and the refs and push options a push
//! brings with what it selects. Uses `config` and `sys` only.

pub mod layout;
pub mod lock;
pub mod push_options;
pub mod queue;
pub mod record;
pub mod refs;
pub mod select;
