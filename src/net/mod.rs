//! Bytes to and from sockets: the [`Transport`] (plain TCP or TLS, either
//! side), the [`OutQueue`] of encoded frames waiting for a socket, and the
//! TLS configurations.

mod out_queue;
pub(crate) mod tls;
mod tls_keys;
mod transport;

pub(crate) use out_queue::OutQueue;
pub(crate) use tls_keys::set_cache as set_tls_key_cache;
pub(crate) use transport::{Input, Transport};
