//! The bridge thread: a current-thread tokio runtime running one session
//! with the broker at a time (connect, declare, consume, publish), and
//! between sessions a backoff during which publishes fail at once.
//!
//! Ids for deliveries come from a counter; the thread keeps each
//! delivery's acker until the loop acks or rejects it. A lost connection
//! drops them all (the broker requeues those messages itself), so a late
//! ack of an old id does nothing.

use super::{AmqpId, AmqpMessage, Command, Event};
use crate::config::{AmqpConfig, ExchangeKind, QueueType};
use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use futures_util::stream::{SelectAll, StreamExt};
use lapin::acker::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

/// The first wait after a lost or refused connection; it doubles up to
/// [`BACKOFF_MAX`] and is back to this after a session that got going.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the thread owns.
struct Bridge {
    cfg: AmqpConfig,
    slot: u16,
    commands: Receiver<Command>,
    events: Sender<Event>,
    waker: Arc<mio::Waker>,
    connected: Arc<AtomicBool>,
    next_id: u64,
    /// Deliveries handed to the loop, not yet acked or rejected.
    ackers: HashMap<u64, Acker>,
}

/// How a session ended.
enum End {
    /// The loop is gone (the worker exits): stop.
    Stop,
    /// The connection failed or was lost.
    Lost(String),
}

/// Starts the thread.
pub(super) fn spawn(
    cfg: AmqpConfig,
    slot: u16,
    commands: Receiver<Command>,
    events: Sender<Event>,
    waker: Arc<mio::Waker>,
    connected: Arc<AtomicBool>,
) {
    let bridge = Bridge {
        cfg,
        slot,
        commands,
        events,
        waker,
        connected,
        next_id: 0,
        ackers: HashMap::new(),
    };
    let spawned = std::thread::Builder::new()
        .name("foreman-amqp".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("amqp: cannot start the bridge's runtime: {e}");
                    return;
                }
            };
            rt.block_on(bridge.run());
        });
    if let Err(e) = spawned {
        log::error!("amqp: cannot start the bridge thread: {e}");
    }
}

impl Bridge {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let (end, got_going) = self.session().await;
            self.link(false);
            self.ackers.clear();
            match end {
                End::Stop => return,
                End::Lost(e) => {
                    log::warn!(
                        "amqp: worker {}: {} {e}; again in {} ms",
                        self.slot,
                        self.cfg.display_url(),
                        backoff.as_millis()
                    );
                }
            }
            if got_going {
                backoff = BACKOFF_MIN;
            }
            if self.wait(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits `d`, failing publishes at once meanwhile; true if the loop is
    /// gone.
    async fn wait(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return false,
                cmd = self.commands.recv() => match cmd {
                    None => return true,
                    Some(Command::Publish { seq, .. }) => self.send(Event::Confirmed(seq, false)),
                    Some(_) => {} // a stale ack: the broker requeued it
                },
            }
        }
    }

    /// Tells the loop, and wakes it.
    fn send(&self, ev: Event) {
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // Cannot happen within the bound (see Bridge::start); the
                // delivery stays unacked and comes again.
                log::error!("amqp: worker {}: the loop's queue is full", self.slot);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        if let Err(e) = self.waker.wake() {
            log::warn!("amqp: cannot wake the loop: {e}");
        }
    }

    fn link(&self, up: bool) {
        if self.connected.swap(up, Ordering::AcqRel) != up {
            self.send(Event::Link(up));
        }
    }

    /// One connection's life; the flag says whether it got to consuming.
    async fn session(&mut self) -> (End, bool) {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("foreman worker {}", self.slot).into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let setup = async {
            let conn = Connection::connect(&self.cfg.url, props).await?;
            let out = conn.create_channel().await?;
            out.confirm_select(ConfirmSelectOptions::default()).await?;
            for e in &self.cfg.exchanges {
                let kind = match e.kind {
                    ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                    ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
                    ExchangeKind::Topic => lapin::ExchangeKind::Topic,
                    ExchangeKind::Headers => lapin::ExchangeKind::Headers,
                };
                let durable = ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                };
                out.exchange_declare(&e.name, kind, durable, FieldTable::default())
                    .await?;
            }
            let inp = conn.create_channel().await?;
            inp.basic_qos(self.cfg.prefetch, BasicQosOptions::default())
                .await?;
            let mut consumers = SelectAll::new();
            let queues = std::iter::once(&self.cfg.queue).chain(&self.cfg.consume);
            for (n, q) in queues.enumerate() {
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                inp.queue_declare(q, durable, queue_args(self.cfg.queue_type))
                    .await?;
                let tag = format!("foreman-{}-{}-{n}", std::process::id(), self.slot);
                let c = inp
                    .basic_consume(
                        q,
                        &tag,
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let name = (n > 0).then(|| q.clone());
                consumers.push(c.map(move |d| (name.clone(), d)));
            }
            Ok::<_, lapin::Error>((conn, out, inp, consumers))
        };
        let (conn, out, _inp, mut consumers) = match setup.await {
            Ok(s) => s,
            Err(e) => return (self.check_stop(e.to_string()), false),
        };
        log::info!(
            "amqp: worker {} connected to {}, consuming {}",
            self.slot,
            self.cfg.display_url(),
            std::iter::once(&self.cfg.queue)
                .chain(&self.cfg.consume)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.link(true);
        let mut link_events = Box::pin(conn.events_listener());
        let end = loop {
            tokio::select! {
                ev = link_events.next() => match ev {
                    Some(lapin::Event::Error(e)) => break End::Lost(e.to_string()),
                    Some(lapin::Event::ConnectionBlocked(why)) => {
                        log::warn!("amqp: worker {}: the broker blocks publishing: {why}", self.slot);
                    }
                    Some(_) => {}
                    None => break End::Lost("connection lost".into()),
                },
                cmd = self.commands.recv() => match cmd {
                    None => break End::Stop,
                    Some(cmd) => {
                        if let Err(e) = self.command(&out, cmd).await {
                            break End::Lost(e.to_string());
                        }
                    }
                },
                d = consumers.next() => match d {
                    Some((queue, Ok(d))) => self.delivered(queue, d),
                    Some((_, Err(e))) => break End::Lost(e.to_string()),
                    None => break End::Lost("consumers cancelled".into()),
                },
            }
        };
        if matches!(end, End::Stop) {
            let _ = conn.close(200, "worker stopping").await;
        }
        (end, true)
    }

    /// A failed setup: stop if the loop is gone meanwhile.
    fn check_stop(&self, e: String) -> End {
        if self.commands.is_closed() {
            End::Stop
        } else {
            End::Lost(e)
        }
    }

    /// A delivery: to the loop with a new id; its acker kept.
    fn delivered(&mut self, queue: Option<String>, d: lapin::message::Delivery) {
        let id = AmqpId(self.next_id);
        self.next_id += 1;
        self.ackers.insert(id.0, d.acker);
        let body = Bytes::from(d.data);
        let ev = match queue {
            None => Event::Push(id, body),
            Some(queue) => Event::App(AmqpMessage {
                id,
                queue,
                exchange: d.exchange.to_string(),
                routing_key: d.routing_key.to_string(),
                body,
                reply_to: d.properties.reply_to().as_ref().map(ShortString::to_string),
                correlation_id: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(ShortString::to_string),
                redelivered: d.redelivered,
            }),
        };
        self.send(ev);
    }

    /// Carries out one command of the loop.
    async fn command(&mut self, out: &lapin::Channel, cmd: Command) -> lapin::Result<()> {
        match cmd {
            Command::Ack(id) => {
                if let Some(a) = self.ackers.remove(&id.0) {
                    a.ack(BasicAckOptions::default()).await?;
                }
            }
            Command::Reject(id, requeue) => {
                if let Some(a) = self.ackers.remove(&id.0) {
                    a.reject(BasicRejectOptions { requeue }).await?;
                }
            }
            Command::Publish {
                seq,
                exchange,
                routing_key,
                body,
                props,
            } => {
                // Persistent: a confirmed message on a durable queue
                // outlives a broker restart.
                let mut p = BasicProperties::default().with_delivery_mode(2);
                if let Some(c) = props.correlation_id {
                    p = p.with_correlation_id(c.into());
                }
                if let Some(r) = props.reply_to {
                    p = p.with_reply_to(r.into());
                }
                if let Some(t) = props.content_type {
                    p = p.with_content_type(t.into());
                }
                let sent = out
                    .basic_publish(
                        &exchange,
                        &routing_key,
                        BasicPublishOptions::default(),
                        &body,
                        p,
                    )
                    .await;
                match sent {
                    Ok(confirm) => {
                        let events = self.events.clone();
                        let waker = self.waker.clone();
                        tokio::spawn(async move {
                            let ok = matches!(confirm.await, Ok(c) if c.is_ack());
                            match events.try_send(Event::Confirmed(seq, ok)) {
                                Ok(()) => {
                                    let _ = waker.wake();
                                }
                                // Within the bound this cannot happen; if it
                                // does, say so: publish `seq` stays pending.
                                Err(TrySendError::Full(_)) => log::error!(
                                    "amqp: the loop's queue is full; the answer to publish {seq} is lost"
                                ),
                                Err(TrySendError::Disconnected(_)) => {}
                            }
                        });
                    }
                    Err(e) => {
                        self.send(Event::Confirmed(seq, false));
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The arguments a queue of this type is declared with: none for a classic
/// queue, so that one declared before without `x-queue-type` still matches.
fn queue_args(t: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if t == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    args
}
