//! Design B: redis-rs (sync) in a bridge thread per worker. The loop builds
//! `redis::Cmd`s and sends them over a bounded crossbeam channel; the bridge
//! thread drains the channel, sends what is there as one pipeline, and
//! answers with the replies over another channel, ringing the loop's
//! `mio::Waker`. The subscriber is a redis-rs `PubSub` in its own thread,
//! forwarding each message's payload the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use mio::{Events, Poll, Token, Waker};

use crate::{hset_field, payload, Driver, Work, CHANNEL, HASH};

const WAKER: Token = Token(0);
/// Commands the loop may have queued for the bridge.
const QUEUE: usize = 1024;
/// Most commands in one pipeline.
const MAX_PIPELINE: usize = 1024;
/// The payload that tells the subscriber thread to stop.
const STOP: &[u8] = b"stop";

/// The loop's waker, rung at most once until the loop answers: threads that
/// hand over many items in a row cost one `eventfd` write, not one each.
struct Doorbell {
    waker: Waker,
    rung: AtomicBool,
}

impl Doorbell {
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Called by the loop before it drains the channels: an item handed over
    /// after this rings again.
    fn answer(&self) {
        self.rung.store(false, Ordering::SeqCst);
    }
}

type Replies = redis::RedisResult<Vec<redis::Value>>;

/// The bridge thread: one pipeline per drain of the channel.
fn bridge(
    mut con: redis::Connection,
    rx: Receiver<redis::Cmd>,
    tx: Sender<Replies>,
    bell: Arc<Doorbell>,
) {
    let mut pipe = redis::pipe();
    while let Ok(first) = rx.recv() {
        pipe.clear();
        pipe.add_command(first);
        let mut n = 1;
        while n < MAX_PIPELINE {
            match rx.try_recv() {
                Ok(cmd) => {
                    pipe.add_command(cmd);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let replies = pipe.query::<Vec<redis::Value>>(&mut con);
        if tx.send(replies).is_err() {
            return;
        }
        bell.ring();
    }
}

/// The subscriber thread: blocks in `get_message`, forwards payloads until
/// it reads [`STOP`] or its connection breaks.
fn subscriber(
    client: redis::Client,
    tx: Sender<Vec<u8>>,
    ready: Sender<Result<(), String>>,
    bell: Arc<Doorbell>,
) {
    let mut con = match client.get_connection() {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut ps = con.as_pubsub();
    if let Err(e) = ps.subscribe(CHANNEL) {
        let _ = ready.send(Err(e.to_string()));
        return;
    }
    // A bound, so a lost stop message cannot keep the thread forever.
    let _ = ps.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = ready.send(Ok(()));
    while let Ok(msg) = ps.get_message() {
        let p = msg.get_payload_bytes();
        if p == STOP {
            return;
        }
        if tx.send(p.to_vec()).is_err() {
            return;
        }
        bell.ring();
    }
}

/// Whether `v` is what the command of `work` answers.
fn expected(work: Work, v: &redis::Value) -> bool {
    match (work, v) {
        (Work::Publish(_), redis::Value::Int(n)) => *n == 1,
        (Work::Ping, redis::Value::SimpleString(s)) => s == "PONG",
        (Work::Hset, redis::Value::Int(n)) => *n == 0 || *n == 1,
        _ => false,
    }
}

fn command(work: Work, seq: u64, ts: u64) -> redis::Cmd {
    match work {
        Work::Publish(_) => {
            let mut c = redis::cmd("PUBLISH");
            c.arg(CHANNEL).arg(&payload(seq, ts)[..]);
            c
        }
        Work::Ping => redis::cmd("PING"),
        Work::Hset => {
            let mut c = redis::cmd("HSET");
            c.arg(HASH).arg(hset_field(seq)).arg("0123456789abcdef");
            c
        }
    }
}

/// The threads of one run, stopped and joined on drop.
struct Threads {
    client: redis::Client,
    commands: Option<Sender<redis::Cmd>>,
    bridge: Option<JoinHandle<()>>,
    subscriber: Option<JoinHandle<()>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        // The bridge ends when its channel closes.
        self.commands = None;
        if let Some(t) = self.bridge.take() {
            let _ = t.join();
        }
        if let Some(t) = self.subscriber.take() {
            if let Ok(mut con) = self.client.get_connection() {
                let _ = redis::cmd("PUBLISH").arg(CHANNEL).arg(STOP).exec(&mut con);
            }
            let _ = t.join();
        }
    }
}

/// Runs `d`'s workload to its end.
pub fn run(url: &str, d: &mut Driver) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let work = d.work();
    let client = redis::Client::open(url).map_err(|e| err(&e))?;
    let mut poll = Poll::new().map_err(|e| err(&e))?;
    let bell = Arc::new(Doorbell {
        waker: Waker::new(poll.registry(), WAKER).map_err(|e| err(&e))?,
        rung: AtomicBool::new(false),
    });
    let con = client.get_connection().map_err(|e| err(&e))?;
    let (cmd_tx, cmd_rx) = bounded::<redis::Cmd>(QUEUE);
    let (reply_tx, replies) = bounded::<Replies>(QUEUE);
    let b = bell.clone();
    let mut threads = Threads {
        client: client.clone(),
        commands: Some(cmd_tx.clone()),
        bridge: Some(thread::spawn(move || bridge(con, cmd_rx, reply_tx, b))),
        subscriber: None,
    };
    let mut messages = None;
    if work.delivers() {
        let (tx, rx) = bounded::<Vec<u8>>(QUEUE * 4);
        let (ready_tx, ready) = bounded(1);
        let (c, b) = (client.clone(), bell.clone());
        threads.subscriber = Some(thread::spawn(move || subscriber(c, tx, ready_tx, b)));
        ready
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| format!("subscriber: {e}"))??;
        messages = Some(rx);
    }
    let mut events = Events::with_capacity(16);
    while !d.done()? {
        if let Some((first, n, ts)) = d.next_burst() {
            for seq in first..first + n as u64 {
                cmd_tx
                    .try_send(command(work, seq, ts))
                    .map_err(|e| format!("bridge queue: {e}"))?;
            }
        }
        match poll.poll(&mut events, Some(crate::POLL_TIMEOUT)) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.map_err(|e| err(&e))?,
        }
        bell.answer();
        loop {
            match replies.try_recv() {
                Ok(Ok(values)) => values.iter().for_each(|v| d.on_reply(expected(work, v))),
                Ok(Err(e)) => return Err(format!("pipeline: {e}")),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err("bridge thread ended".into()),
            }
        }
        if let Some(rx) = &messages {
            while let Ok(p) = rx.try_recv() {
                d.on_delivery(&p);
            }
        }
    }
    drop(cmd_tx);
    drop(threads);
    Ok(())
}
