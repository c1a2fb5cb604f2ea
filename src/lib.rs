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
//!     let args = Args::from_env()?;
//!     foreman::Server::with_args(&args)?.run(|_worker_id| Broadcast)
//! }
//! ```
//!
//! ## The parts
//!
//! - [`Server`] binds, forks, supervises (respawn with backoff, graceful stop
//!   and reload) and answers Workerman-style commands ([`cli`]).
//! - [`Handler`] is what you implement; [`Ctx`] is what you can do.
//! - Protocols by listen URL scheme: `websocket://` (with plain HTTP on the same
//!   port), `text://`, `frame://`, `tcp://` ([`Protocol`]); each over TLS
//!   (rustls) when [`Config::tls_cert`] and [`Config::tls_key`] are set.
//! - [`Config`] holds every limit, with defaults and validation.
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bench_support;
mod bus;
mod bus_wire;
pub mod cli;
mod codec;
mod config;
mod conn;
mod ctx;
mod error;
mod handler;
mod http;
mod id;
mod master;
mod message;
mod registry;
mod report;
mod timer;
mod tls;
mod worker;

pub use codec::Prepared;
pub use config::{Config, OverflowPolicy, Protocol, ServerSection};
pub use ctx::{ConnInfo, Ctx, Waker, MAX_SESSION_BYTES};
pub use error::{ConnError, Error, Result};
pub use handler::Handler;
pub use http::{Request, Response, MAX_HEAD_BYTES};
pub use id::{ConnId, ParseConnIdError, TimerId};
pub use master::Server;
pub use message::{Message, Utf8Bytes};

/// The README's code blocks, compiled as doctests so the embedding example
/// cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
