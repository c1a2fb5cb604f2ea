//! The RabbitMQ bridge (`[amqp]`, [`crate::AmqpConfig`]): one thread per
//! worker, started in the worker after fork, runs lapin (AMQP 0-9-1) on a
//! current-thread tokio runtime and talks to the worker's loop over two
//! bounded channels and the loop's waker. The loop never waits on it.
//!
//! - **in**: the worker consumes the durable push queue (every worker does:
//!   competing consumers). A message whose body is the `/api/publish` JSON is
//!   routed like that API call and acked only after the send was handed to
//!   the registry (at-least-once: a bridge or worker that dies before acking
//!   gets it redelivered, to this worker or another); a malformed one is
//!   rejected without requeue and counted.
//! - **out**: [`crate::Ctx::publish`] hands a message to the thread, which
//!   publishes it persistent on a confirm-mode channel; at most
//!   `max_pending` are unconfirmed, and past that, or while the broker is
//!   down, the call fails at once.
//! - **app queues** (`consume`): each message reaches
//!   [`crate::Handler::on_amqp_message`] as an [`AmqpMessage`]; the handler
//!   acks it ([`crate::Ctx::amqp_ack`]) when it has durably handled it, and
//!   may answer its `reply_to` ([`crate::Ctx::amqp_reply`]).
//! - **outages**: the thread reconnects with backoff (100 ms doubling to
//!   5 s), declares again and resumes consuming; deliveries not acked on
//!   the lost connection come again (with `redelivered` set).
//!
//! `mod.rs` is the loop's side ([`Bridge`]); `thread.rs` the thread's.

mod thread;

use crate::config::AmqpConfig;
use bytes::Bytes;
use crossbeam_channel::{Receiver, TryRecvError};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// One delivery to be acked or rejected: [`AmqpMessage::id`].
///
/// Ids are unique within a worker. An id from a connection that has since
/// been lost is stale: acking it does nothing, as the broker already gave
/// the message back to the queue.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AmqpId(pub(crate) u64);

impl fmt::Display for AmqpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "amqp#{}", self.0)
    }
}

/// A message from one of the application's `consume` queues, given to
/// [`crate::Handler::on_amqp_message`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AmqpMessage {
    /// Ack or reject it with this ([`crate::Ctx::amqp_ack`],
    /// [`crate::Ctx::amqp_reject`]). Until then the broker keeps it for this
    /// worker (at most `prefetch` of them per queue).
    pub id: AmqpId,
    /// The queue it came from.
    pub queue: String,
    /// The exchange it was published to (empty: the default exchange).
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Its body.
    pub body: Bytes,
    /// Where the sender wants an answer (RabbitMQ's RPC pattern): answer
    /// with [`crate::Ctx::amqp_reply`].
    pub reply_to: Option<String>,
    /// The sender's correlation id, to be carried by the answer.
    pub correlation_id: Option<String>,
    /// The broker delivered it before (to a consumer that did not ack it).
    pub redelivered: bool,
}

/// Properties of a message published with [`crate::Ctx::publish_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpProperties {
    /// The correlation id (for an answer, the request's).
    pub correlation_id: Option<String>,
    /// Where answers to this message should go.
    pub reply_to: Option<String>,
    /// Its content type, such as `application/json`.
    pub content_type: Option<String>,
}

impl AmqpProperties {
    /// Properties with this correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Properties with this reply-to queue.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    /// Properties with this content type.
    pub fn content_type(mut self, t: impl Into<String>) -> Self {
        self.content_type = Some(t.into());
        self
    }
}

/// Why [`crate::Ctx::publish`] refused a message. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The server has no `[amqp]` table.
    #[error("no RabbitMQ bridge: [amqp] url is not set")]
    Off,
    /// The bridge is not connected to the broker right now.
    #[error("RabbitMQ is not connected")]
    Down,
    /// `max_pending` publishes wait for the broker's confirm already.
    #[error("{0} publishes already wait for RabbitMQ's confirm (max_pending)")]
    Full(usize),
    /// [`crate::Ctx::amqp_reply`] to a message without `reply_to`.
    #[error("the message has no reply_to")]
    NoReplyTo,
}

/// A worker's bridge figures: [`crate::Ctx::amqp_stats`] and `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpStats {
    /// Connected to the broker, consuming, now.
    pub connected: bool,
    /// When `connected` last changed.
    pub since: Option<SystemTime>,
    /// Messages received from the push queue and the `consume` queues.
    pub consumed: u64,
    /// Of those, acked (handed to the bridge to ack; an ack for a
    /// connection since lost is dropped, and the broker redelivers).
    pub acked: u64,
    /// Of those, rejected: malformed push messages and the handler's
    /// rejects.
    pub rejected: u64,
    /// Publishes the broker confirmed.
    pub confirmed: u64,
    /// Publishes the broker refused (nack), or lost with the connection
    /// before their confirm came.
    pub failed: u64,
    /// Publishes handed to the bridge and not confirmed or failed yet.
    pub pending: usize,
    /// Connections to the broker lost.
    pub disconnects: u64,
}

/// What the loop tells the thread. Bounded: see [`Bridge::start`].
pub(crate) enum Command {
    Publish {
        /// Its number, as [`crate::Ctx::publish`] returned it.
        seq: u64,
        exchange: String,
        routing_key: String,
        body: Bytes,
        props: AmqpProperties,
    },
    Ack(AmqpId),
    Reject(AmqpId, bool),
}

/// What the thread tells the loop.
pub(crate) enum Event {
    /// A message from the push queue.
    Push(AmqpId, Bytes),
    /// A message from a `consume` queue.
    App(AmqpMessage),
    /// Publish number `.0` was confirmed (`true`) or failed.
    Confirmed(u64, bool),
    /// The connection came up (`true`) or was lost.
    Link(bool),
}

/// The loop's side of the bridge: the channels and the counters.
pub(crate) struct Bridge {
    pub(crate) cfg: AmqpConfig,
    commands: tokio::sync::mpsc::Sender<Command>,
    events: Receiver<Event>,
    connected: Arc<AtomicBool>,
    /// The number of the last publish handed to the thread.
    next_seq: u64,
    pub(crate) stats: AmqpStats,
}

/// Events handled in one turn at most, so the loop serves its sockets too.
pub(crate) const EVENTS_PER_TURN: usize = 1024;

impl Bridge {
    /// Starts the bridge thread of this worker; it wakes `waker` whenever it
    /// has queued events. Call it in the worker, after fork.
    pub(crate) fn start(cfg: &AmqpConfig, slot: u16, waker: Arc<mio::Waker>) -> Bridge {
        let queues = 1 + cfg.consume.len();
        // Deliveries in flight are bounded by the prefetch of each consumer,
        // publishes by max_pending: neither channel can fill in normal work.
        let bound = cfg.max_pending + usize::from(cfg.prefetch) * queues + 64;
        let (commands, command_rx) = tokio::sync::mpsc::channel(bound);
        let (event_tx, events) = crossbeam_channel::bounded(bound);
        let connected = Arc::new(AtomicBool::new(false));
        thread::spawn(
            cfg.clone(),
            slot,
            command_rx,
            event_tx,
            waker,
            connected.clone(),
        );
        Bridge {
            cfg: cfg.clone(),
            commands,
            events,
            connected,
            next_seq: 0,
            stats: AmqpStats::default(),
        }
    }

    /// Hands a publish to the thread, or says why not.
    pub(crate) fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        props: AmqpProperties,
    ) -> Result<u64, PublishError> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(PublishError::Down);
        }
        if self.stats.pending >= self.cfg.max_pending {
            return Err(PublishError::Full(self.stats.pending));
        }
        let seq = self.next_seq + 1;
        let cmd = Command::Publish {
            seq,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body,
            props,
        };
        match self.commands.try_send(cmd) {
            Ok(()) => {
                self.stats.pending += 1;
                self.next_seq = seq;
                Ok(seq)
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                Err(PublishError::Full(self.stats.pending))
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(PublishError::Down),
        }
    }

    /// Acks a delivery; false if the thread could not take it (then the
    /// broker delivers it again once the connection is lost).
    pub(crate) fn ack(&mut self, id: AmqpId) -> bool {
        let ok = self.commands.try_send(Command::Ack(id)).is_ok();
        if ok {
            self.stats.acked += 1;
        } else {
            log::warn!("amqp: cannot ack {id}: the bridge's queue is full or closed");
        }
        ok
    }

    /// Rejects a delivery, requeued or not.
    pub(crate) fn reject(&mut self, id: AmqpId, requeue: bool) -> bool {
        let ok = self.commands.try_send(Command::Reject(id, requeue)).is_ok();
        if ok {
            self.stats.rejected += 1;
        } else {
            log::warn!("amqp: cannot reject {id}: the bridge's queue is full or closed");
        }
        ok
    }

    /// The next event, counted; `None` when there is none now.
    pub(crate) fn next_event(&mut self) -> Option<Event> {
        let ev = match self.events.try_recv() {
            Ok(ev) => ev,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => return None,
        };
        match &ev {
            Event::Push(..) | Event::App(_) => self.stats.consumed += 1,
            Event::Confirmed(_, ok) => {
                self.stats.pending = self.stats.pending.saturating_sub(1);
                if *ok {
                    self.stats.confirmed += 1;
                } else {
                    self.stats.failed += 1;
                }
            }
            Event::Link(up) => {
                if !*up {
                    self.stats.disconnects += 1;
                }
                self.stats.since = Some(SystemTime::now());
            }
        }
        Some(ev)
    }

    /// Whether events wait.
    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The figures, with `connected` as the thread sees it now.
    pub(crate) fn stats(&self) -> AmqpStats {
        let mut s = self.stats.clone();
        s.connected = self.connected.load(Ordering::Acquire);
        s
    }
}
