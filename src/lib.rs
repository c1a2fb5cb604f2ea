//! # foreman
//!
//! Multi-process network servers in the style of PHP's Workerman: a master
//! process forks `count` workers that share the listening socket; each runs its
//! own mio event loop and calls your [`Handler`]. Unlike Workerman, sends reach
//! connections on *every* worker: a replicated online-user registry and a bus
//! between workers give you GatewayWorker's API (uids, groups, send to uid,
//! group or all) out of the box.
//!
//! ```no_run
//! use foreman::{Ctx, ConnId, Handler, Message, Server, cli::Args};
//!
//! /// Every message a client sends reaches every client, on every worker.
//! struct Broadcast;
//!
//! impl Handler for Broadcast {
//!     fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
//!         ctx.send(conn, format!("welcome, you are {conn}"));
//!     }
//!     fn on_message(&mut self, ctx: &mut Ctx, _conn: ConnId, msg: Message) {
//!         ctx.send_to_all(msg, &[]);
//!     }
//! }
//!
//! fn main() -> foreman::Result<()> {
//!     // `-c FILE`, `--listen websocket://127.0.0.1:8000`, `--count 4`, `stop`, ...
//!     let args = Args::from_env();
//!     foreman::Server::with_args(&args)?.run(|_worker_id| Broadcast)
//! }
//! ```
//!
//! ## The parts
//!
//! - [`Server`] binds, forks, supervises (respawn with backoff, graceful stop
//!   and reload) and answers Workerman-style commands ([`cli`]).
//! - [`Handler`] is what you implement; [`Ctx`] is what you can do: send
//!   (encoded once, to any worker's connections), the registry of uids,
//!   groups and sessions, timers, outbound connections ([`Ctx::connect`],
//!   [`ConnectOptions`]) and blocking work ([`Ctx::spawn_blocking`]).
//! - Protocols by listen URL scheme: `websocket://` (with plain HTTP on the same
//!   port), `text://`, `frame://`, `tcp://` ([`Protocol`]); each over TLS
//!   (rustls) when [`Config::tls_cert`] and [`Config::tls_key`] are set.
//! - [`Config`] holds every limit, with defaults and validation.
//!
//! ## Architecture
//!
//! A master process (no client traffic, no threads) forks `count` workers.
//! Each worker is one thread running one mio loop; the data path through
//! the crate's modules is:
//!
//! ```text
//! socket ─> net (Transport: plain or TLS, OutQueue) ─> proto (HTTP heads,
//! WebSocket via tungstenite, text/frame/tcp framing) ─> worker (the loop:
//! accept, read, handshake, write, deadlines) ─> Handler callbacks, given a
//! Ctx over the worker's core ─> core (connections and their lifecycle,
//! routing, timers, blocking pool) ─> cluster (the bus between workers and
//! the replicated registry) ─> proto::codec (encode once) ─> net::OutQueue
//! ─> one sendmsg per connection per write pass ─> socket
//! ```
//!
//! - `net/`: bytes to and from sockets. `Transport` is a TCP socket plain
//!   or under a rustls session (server or client side), so nothing above it
//!   asks whether a connection is TLS; `OutQueue` holds shared encoded
//!   frames until one `sendmsg(2)` writes them.
//! - `proto/`: what the bytes mean, sans I/O: the HTTP head parser and
//!   responses, the WebSocket handshake of both sides, the plain
//!   protocols' framing, and `codec` (a broadcast is encoded once per wire).
//! - `core/`: what a worker knows. A connection's life is one `Lifecycle`
//!   (connecting -> handshaking -> open -> closing, and waiting between
//!   reconnect attempts), changed only by its own methods; `lifecycle.rs`
//!   takes the side effects of each step (registry, bus, callbacks owed).
//!   `route.rs` queues sends under the output cap or carries them across
//!   the bus; `pool.rs` is the blocking-work pool.
//! - `ctx/`: [`Ctx`], the handler's view of the core, lent for one callback.
//! - `cluster/`: the bus (a mesh of Unix sockets between workers, one link
//!   per ordered pair, order kept per sender and receiver) and the registry
//!   replica each worker holds, so queries are local.
//! - `worker/`: the loop, owning the core: `accept`, `read`, `handshake`,
//!   `write`, `sweep` (deadlines, stop), `status`.
//! - `master/`: binding, forking, supervision, `reload`, and the commands
//!   that talk to a running master (`control`), with `report` for `status`
//!   and `connections`.
//!
//! ## Platform
//!
//! Linux only: the crate uses `fork`, `signalfd`, `epoll` (through mio),
//! abstract Unix sockets, `/proc` and `PR_SET_PDEATHSIG`.
#![deny(missing_docs)]

mod amqp;
mod api;
#[doc(hidden)]
pub mod bench_support;
pub mod cli;
mod cluster;
mod config;
mod core;
mod ctx;
mod entropy;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod id;
mod master;
mod message;
mod net;
mod proto;
mod report;
mod shm;
mod signals;
mod worker;

pub use crate::amqp::{AmqpId, AmqpMessage, AmqpProperties, AmqpStats, PublishError};
pub use crate::cluster::node::ClusterStats;
pub use crate::core::dial::{ConnectOptions, Reconnect, WhileDown};
pub use crate::core::membership::MAX_SESSION_BYTES;
pub use crate::core::pool::{JobId, JobResult, PoolBusy};
pub use crate::core::Waker;
pub use config::{
    AmqpConfig, AmqpExchange, AmqpSection, ApiConfig, ApiSection, ClusterConfig, ClusterSection,
    Config, ExchangeKind, ExchangeSection, Listen, OverflowPolicy, QueueType, RedisUrl,
    ServerSection,
};
pub use ctx::{ConnInfo, Ctx};
pub use error::{ConnError, ConnectError, Error, Result};
pub use handler::Handler;
pub use id::{ConnId, ParseConnIdError, TimerId};
pub use master::Server;
pub use message::{Message, Utf8Bytes};
pub use proto::codec::Prepared;
pub use proto::http::{Request, Response, MAX_HEAD_BYTES};
pub use proto::ws::{Accept, CloseFrame};
pub use proto::Protocol;

/// The README's code blocks, compiled as doctests so the embedding example
/// cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
