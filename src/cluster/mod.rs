//! Between workers: the bus (a mesh of Unix sockets, one link per ordered
//! pair of workers), its wire format, and the replicated online-user
//! registry it keeps in step; and between nodes, through Redis (`node.rs`
//! over `redis.rs` and `resp.rs`).

pub(crate) mod bus;
pub(crate) mod node;
pub(crate) mod redis;
pub(crate) mod registry;
pub(crate) mod resp;
pub(crate) mod wire;
