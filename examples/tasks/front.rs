//! The front: what every worker does for its own connections. It checks
//! each frame (`request.rs`), answers `ping` and `hello` itself (auth
//! included), numbers every other request and forwards it to the brain,
//! and writes the brain's replies back with their `ref`.
//!
//! Bounds: a connection with [`MAX_PENDING`] requests unanswered is not
//! read until it is down to half; the kernel's buffers and TCP then slow
//! the client down.

use crate::auth;
use crate::config::TasksConfig;
use crate::link::{Executor, Msg};
use crate::live;
use crate::reply;
use crate::request::{self, Code, Parsed};
use crate::types::{Request, Role};
use foreman::{ConnId, Ctx, Message};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Requests of one connection waiting for the brain before it is paused.
pub const MAX_PENDING: u32 = 1024;

/// The listener of the page (`http_listen`).
pub const PAGE_LISTENER: usize = 1;

/// One connection of this worker.
#[derive(Default)]
struct Client {
    /// Set by a good `hello`.
    role: Option<Role>,
    /// Requests at the brain.
    pending: u32,
    /// Reading paused for [`MAX_PENDING`].
    paused: bool,
}

/// A request at the brain: whose, and its `ref`.
struct Pending {
    conn: ConnId,
    reference: Option<String>,
}

/// See the module docs.
pub struct Front {
    config: Arc<TasksConfig>,
    clients: HashMap<ConnId, Client>,
    /// By request number, so that [`Front::lost`] takes the oldest.
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    executors: HashMap<ConnId, Executor>,
}

impl Front {
    /// A front with no connections.
    pub fn new(config: Arc<TasksConfig>) -> Front {
        Front {
            config,
            clients: HashMap::new(),
            pending: BTreeMap::new(),
            next_seq: 1,
            executors: HashMap::new(),
        }
    }

    /// A connection opened; a page connection gets snapshots (the first
    /// one from the brain now).
    pub fn open(&mut self, ctx: &mut Ctx, conn: ConnId) -> Option<Msg> {
        self.clients.insert(conn, Client::default());
        let page = ctx
            .conn_info(conn)
            .is_some_and(|i| i.listener == PAGE_LISTENER);
        if page {
            ctx.join_group(conn, live::PAGE_GROUP);
            return Some(Msg::Page {
                conn: conn.to_string(),
            });
        }
        None
    }

    /// A connection closed: the brain hears of it if it said `hello`.
    pub fn close(&mut self, conn: ConnId) -> Option<Msg> {
        self.executors.remove(&conn);
        let client = self.clients.remove(&conn)?;
        client.role.map(|_| Msg::Gone {
            conn: conn.to_string(),
        })
    }

    /// One payload from `conn`: answered here, or a message for the brain.
    pub fn message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: &Message) -> Option<Msg> {
        let role = self.clients.get(&conn)?.role;
        let parsed = request::parse(msg.as_bytes(), role, self.config.max_payload_bytes);
        let Parsed { reference, request } = match parsed {
            Ok(p) => p,
            Err(r) => {
                let frame = reply::error(r.code.as_str(), &r.message);
                ctx.send(conn, reply::with_ref(frame, r.reference.as_deref()));
                return None;
            }
        };
        let r = reference.as_deref();
        match request {
            Request::Ping => {
                ctx.send(conn, reply::with_ref(reply::pong(), r));
                None
            }
            Request::Hello(hello) => {
                if let Some(secret) = &self.config.auth_secret {
                    if let Err(e) = auth::verify_now(secret, hello.token.as_deref(), &hello.name) {
                        let frame = reply::error(Code::AuthFailed.as_str(), &e.to_string());
                        ctx.send(conn, reply::with_ref(frame, r));
                        ctx.close(conn);
                        return None;
                    }
                }
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.role = Some(hello.role);
                }
                let node = conn.to_string();
                ctx.send(conn, reply::with_ref(reply::welcome(hello.role, &node), r));
                if hello.role != Role::Executor {
                    return None;
                }
                let e = Executor {
                    conn: node,
                    queues: hello.queues,
                    capacity: hello.capacity,
                };
                self.executors.insert(conn, e.clone());
                Some(Msg::Join(e))
            }
            request => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.pending.insert(seq, Pending { conn, reference });
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.pending += 1;
                    if c.pending >= MAX_PENDING && !c.paused {
                        c.paused = ctx.pause_reading(conn);
                    }
                }
                Some(Msg::Request {
                    seq,
                    conn: conn.to_string(),
                    request,
                })
            }
        }
    }

    /// The brain's reply to request `seq`.
    pub fn reply(&mut self, ctx: &mut Ctx, seq: u64, frame: String) {
        let Some(p) = self.pending.remove(&seq) else {
            return;
        };
        self.answered(ctx, p, frame);
    }

    /// Requests before `marker` still unanswered were lost with an old
    /// brain: `unavailable`.
    pub fn lost(&mut self, ctx: &mut Ctx, marker: u64) {
        let lost: Vec<u64> = self.pending.range(..marker).map(|(s, _)| *s).collect();
        if !lost.is_empty() {
            log::warn!(
                "{} requests were lost with a restarting brain; answered unavailable",
                lost.len()
            );
        }
        for seq in lost {
            if let Some(p) = self.pending.remove(&seq) {
                let frame = reply::error(
                    Code::Unavailable.as_str(),
                    "the scheduler restarted; nothing was done, try again",
                );
                self.answered(ctx, p, frame);
            }
        }
    }

    fn answered(&mut self, ctx: &mut Ctx, p: Pending, frame: String) {
        let Some(c) = self.clients.get_mut(&p.conn) else {
            return;
        };
        ctx.send(p.conn, reply::with_ref(frame, p.reference.as_deref()));
        c.pending = c.pending.saturating_sub(1);
        if c.paused && c.pending <= MAX_PENDING / 2 {
            c.paused = false;
            ctx.resume_reading(p.conn);
        }
    }

    /// The answer to a new brain's [`Msg::Up`].
    pub fn here(&self) -> Msg {
        Msg::Here {
            executors: self.executors.values().cloned().collect(),
            marker: self.next_seq,
        }
    }
}
