//! Bytes to and from sockets: the [`Transport`] (plain TCP or TLS, either
//! side), the [`OutQueue`] of encoded frames waiting for a socket, and the
//! TLS configurations.

mod out_queue;
pub(crate) mod tls;
mod transport;

pub(crate) use out_queue::OutQueue;
pub(crate) use transport::{Input, Transport};
