//! The load generator: one child process of the runner holding a share of the
//! client connections in a single mio loop.
//!
//! It is the bench binary itself started as `ws loadgen '<json LoadConfig>'`.
//! It talks to the runner in lines: it prints `ready {json}` once its
//! connections are upgraded, then obeys stdin commands:
//!
//! - `run START_NS WARM_NS MEASURE_NS`: drive the scenario; traffic stops at
//!   `START+WARM+MEASURE` (CLOCK_MONOTONIC), counted only inside the measure
//!   window. Echo and churn then print `done {json Stats}`; fanout prints
//!   `sent {json Stats}` and waits for `expect N` (messages every connection
//!   must have received) before draining and printing `done {json Stats}`.
//! - `arm`, then `fire` (an idle scenario's one broadcast, `quarter.rs`):
//!   count receipts from `arm` on, say `armed`; on `fire` the first load
//!   generator sends one message, and each prints `bcast {json Stats}` once
//!   all its connections have it.
//! - stdin closed: close every connection with 1000 and exit.
//!
//! The `sync-*` and `chat-fanout` scenarios speak the applications' JSON
//! protocols instead of the bench payload (`app.rs`); their connections
//! count as connected once the protocol's setup is answered, and their
//! fanout writer waits for its writes' acks before `sent`.

mod app;
mod connection;
mod quarter;
mod rooms;

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use crate::hist::Histogram;
use crate::wire::{self, MaskRng};
use app::{App, AppConn};
use connection::flush;

const WAKER: Token = Token(usize::MAX);
/// `sync-writes`: keys each client writes in turn.
pub const KEYS_PER_WRITER: usize = 4;
pub use rooms::{ROOMS, WINDOW};
/// Source addresses used: 127.0.0.2 ..= 127.0.0.(1 + SOURCE_ADDRS).
pub const SOURCE_ADDRS: usize = 32;

/// What one load generator process does (shipped as JSON on its command line).
#[derive(Clone, Serialize, Deserialize)]
pub struct LoadConfig {
    /// `idle`, `echo`, `fanout`, `churn`, or an application's: `sync-writes`,
    /// `sync-hot`, `sync-fanout`, `chat-fanout`, `chat-rooms`,
    /// `broadcast-rooms`.
    pub scenario: String,
    /// Server address.
    pub target: SocketAddr,
    /// Connections this process holds (churn: concurrent attempts).
    pub conns: usize,
    /// Global index of this process's first connection (spreads source addrs).
    pub conn_base: usize,
    /// Connection attempts in flight at once while connecting.
    pub connect_concurrency: usize,
    /// Message size in bytes (>= 32).
    pub size: usize,
    /// Fanout: senders among this process's connections.
    pub senders: usize,
    /// Fanout: global id of this process's first sender.
    pub sender_base: u32,
    /// Fanout: senders over all processes.
    pub senders_total: u32,
    /// Fanout: messages/s per sender; 0 means saturation (send on own echo).
    pub rate_per_sender: f64,
    /// Bound on the connect phase, in ms.
    pub deadline_ms: u64,
    /// Bound on waiting for messages in flight after the window, in ms.
    pub drain_ms: u64,
    /// Connections over all processes (the rooms scenarios spread their
    /// senders over them).
    #[serde(default)]
    pub conns_total: usize,
    /// `wss://`: the PEM certificate of the server, the only one trusted.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

/// What a load generator reports; summed over processes by the runner.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Connections upgraded in the connect phase (churn: handshakes in window).
    pub connected: u64,
    /// Connection attempts that failed.
    pub failed: u64,
    /// Nanoseconds the connect phase took.
    pub connect_ns: u64,
    /// Messages sent (whole run, all phases).
    pub sent: u64,
    /// Messages received inside the measure window.
    pub received_in_window: u64,
    /// Messages received over the whole run.
    pub received_total: u64,
    /// Fanout: deliveries missing after the drain (expected - received).
    pub lost: u64,
    /// Fanout: deliveries beyond what was expected, or repeated sequences.
    pub duplicated: u64,
    /// Fanout: deliveries that arrived out of order per sender.
    pub reordered: u64,
    /// Connections the server closed or broke during the run.
    pub closed_by_server: u64,
    /// Latency of messages sent inside the window.
    pub latency: Histogram,
    /// Applications: writes (`put`, `say`) acknowledged over the whole run.
    #[serde(default)]
    pub acked: u64,
    /// Applications: `conflict` replies (inside the window for the write
    /// scenarios; over the whole run for a fanout writer).
    #[serde(default)]
    pub conflicts: u64,
    /// Applications: `error` replies, and frames that were not the
    /// protocol's, over the whole run.
    #[serde(default)]
    pub errors: u64,
    /// Rooms: messages owed to each room's members over the whole run (the
    /// chat: acked; the broadcast example: sent), by room.
    #[serde(default)]
    pub room_counts: Vec<u64>,
    /// Rooms: acks received inside the measure window (stored messages).
    #[serde(default)]
    pub acked_in_window: u64,
    /// Rooms: latency from a `say` sent inside the window to its `ack`.
    #[serde(default)]
    pub ack_latency: Histogram,
}

#[derive(PartialEq, Clone, Copy)]
enum State {
    Connecting,
    Upgrading,
    Open,
    Closing,
    Dead,
}

struct Conn {
    stream: TcpStream,
    /// The client side of TLS, for `wss://`.
    tls: Option<Box<rustls::ClientConnection>>,
    state: State,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Partial message assembled from continuation frames.
    frag: Vec<u8>,
    /// Global sender id if this connection sends in fanout; echo: own index.
    sender: Option<u32>,
    /// Next sequence number to send.
    seq: u32,
    /// Saturation/echo: a message of ours is in flight.
    awaiting: bool,
    /// Rate mode: when the next message is due (ns).
    next_due: u64,
    /// Messages received over the whole run.
    received: u64,
    /// Fanout: next expected sequence per global sender id.
    expect: Vec<u32>,
    /// Applications: the connection's protocol state.
    app: AppConn,
}

/// The loop's clock marks for the current run.
#[derive(Default, Clone, Copy)]
pub(crate) struct Window {
    /// Start of the measure window (CLOCK_MONOTONIC ns).
    pub(crate) measure: u64,
    /// Its end: traffic stops here.
    pub(crate) end: u64,
}

impl Window {
    /// Whether `t` is inside the measure window.
    pub(crate) fn contains(&self, t: u64) -> bool {
        (self.measure..self.end).contains(&t)
    }
}

impl Stats {
    /// Fanout: a delivery of sequence `seq` from `sender`, against the
    /// next sequence expected of each sender; counts it out of order or
    /// repeated.
    pub(crate) fn check_order(&mut self, expect: &mut [u32], sender: u32, seq: u32) {
        let Some(next) = expect.get_mut(sender as usize) else {
            return;
        };
        match seq.cmp(next) {
            std::cmp::Ordering::Equal => *next += 1,
            std::cmp::Ordering::Greater => {
                self.reordered += 1;
                *next = seq + 1;
            }
            std::cmp::Ordering::Less => self.duplicated += 1,
        }
    }

    /// Counts a delivery that arrived at `now`; its latency too if it was
    /// sent (`sent`, from its payload) inside the window.
    pub(crate) fn delivery(&mut self, w: Window, now: u64, sent: Option<u64>) {
        self.received_total += 1;
        if w.contains(now) {
            self.received_in_window += 1;
        }
        if let Some(ts) = sent.filter(|ts| w.contains(*ts)) {
            self.latency.record_ns(now.saturating_sub(ts));
        }
    }
}

struct Gen {
    cfg: LoadConfig,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    rng: MaskRng,
    scratch: Vec<u8>,
    msg: Vec<u8>,
    host: String,
    stats: Stats,
    window: Window,
    running: bool,
    /// Attempts in progress (connect phase / churn).
    pending: usize,
    started: usize,
    /// Indices of this process's sending connections.
    senders: Vec<usize>,
    /// When the connect phase's latest upgrade completed (ns).
    last_upgrade: u64,
    /// The application protocol spoken, if any (from `cfg.scenario`).
    app: Option<App>,
    /// `wss://`: the configuration of every connection's TLS session.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Entry point of a load generator child; `arg` is the JSON [`LoadConfig`].
pub fn main(arg: &str) -> io::Result<()> {
    let cfg: LoadConfig = serde_json::from_str(arg).map_err(io::Error::other)?;
    crate::raise_nofile_limit();
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Some(line)).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        let _ = tx.send(None);
        let _ = waker.wake();
    });
    let cfg_scenario = cfg.scenario.clone();
    let tls = match &cfg.tls_ca {
        Some(ca) => Some(crate::tls::client_config(ca).map_err(io::Error::other)?),
        None => None,
    };
    let mut g = Gen {
        host: cfg.target.to_string(),
        rng: MaskRng::new(cfg.conn_base as u32 ^ 0x9E37_79B9),
        msg: vec![0; cfg.size.max(wire::PAYLOAD_MIN)],
        cfg,
        poll,
        conns: Vec::new(),
        free: Vec::new(),
        scratch: vec![0; 256 * 1024],
        stats: Stats::default(),
        window: Window::default(),
        running: false,
        pending: 0,
        started: 0,
        senders: Vec::new(),
        last_upgrade: 0,
        app: App::parse(&cfg_scenario),
        tls,
    };
    let mut events = Events::with_capacity(1024);
    let churn = g.cfg.scenario == "churn";
    if !churn {
        let t0 = wire::mono_ns();
        let deadline = t0 + g.cfg.deadline_ms * 1_000_000;
        while g.started < g.cfg.conns || g.pending > 0 {
            g.start_connects();
            g.turn(&mut events, Some(deadline))?;
            if wire::mono_ns() > deadline {
                break;
            }
        }
        // Until the last upgrade: stuck attempts must not dilute the rate.
        g.stats.connect_ns = g.last_upgrade.saturating_sub(t0).max(1);
        g.stats.failed += g.pending as u64;
    }
    report("ready", &g.stats);
    let mut commands = VecDeque::new();
    loop {
        while let Ok(cmd) = rx.try_recv() {
            commands.push_back(cmd);
        }
        match commands.pop_front() {
            Some(Some(line)) => g.command(&line, &mut events)?,
            Some(None) => break,
            None => g.turn(&mut events, None)?,
        }
    }
    g.close_all(&mut events)
}

/// A command line from the runner: its verb and its numbers.
pub(crate) fn command_words(line: &str) -> (Option<&str>, Vec<u64>) {
    let words = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    (line.split_whitespace().next(), words)
}

fn report(tag: &str, stats: &Stats) {
    let json = serde_json::to_string(stats).unwrap_or_default();
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{tag} {json}");
    let _ = out.flush();
}

impl Gen {
    fn command(&mut self, line: &str, events: &mut Events) -> io::Result<()> {
        let (verb, words) = command_words(line);
        match (verb, words.as_slice()) {
            (Some("run"), [start, warm, measure]) => self.run(*start, *warm, *measure, events),
            (Some("expect"), [n]) => self.drain(|_| *n, events),
            (Some("expect-rooms"), counts) => {
                let counts = counts.to_vec();
                self.drain(|c| rooms::owed(c, &counts), events)
            }
            (Some("arm"), []) => {
                self.arm();
                Ok(())
            }
            (Some("fire"), []) => self.fire(events),
            _ => Err(io::Error::other(format!("loadgen: bad command {line:?}"))),
        }
    }

    fn run(&mut self, start: u64, warm: u64, measure: u64, events: &mut Events) -> io::Result<()> {
        self.window = Window {
            measure: start + warm,
            end: start + warm + measure,
        };
        let churn = self.cfg.scenario == "churn";
        let fanout = self.cfg.scenario == "fanout";
        // Wait for the common start time, serving events meanwhile.
        while wire::mono_ns() < start {
            self.turn(events, Some(start))?;
        }
        self.running = true;
        if churn {
            self.stats.connected = 0;
        }
        let period = if self.cfg.rate_per_sender > 0.0 {
            (1e9 / self.cfg.rate_per_sender) as u64
        } else {
            0
        };
        let now = wire::mono_ns();
        for k in 0..self.senders.len() {
            let i = self.senders[k];
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if c.state != State::Open {
                continue;
            }
            match (c.sender, self.cfg.scenario.as_str()) {
                (Some(id), _) if period > 0 => {
                    c.next_due = now + period * id as u64 / self.cfg.senders_total.max(1) as u64;
                }
                (Some(_), _) => self.send_next(i, now),
                _ => {}
            }
        }
        while wire::mono_ns() < self.window.end {
            if churn {
                self.start_connects();
            }
            if period > 0 {
                self.send_due(period);
            }
            self.turn(events, Some(self.window.end))?;
        }
        self.running = false;
        if fanout {
            report("sent", &self.stats);
            return Ok(());
        }
        // Echo and applications: let the messages in flight come back
        // (a fanout writer's acks: only acked writes are owed to every
        // subscriber), within the deadline.
        let deadline = wire::mono_ns() + self.cfg.drain_ms * 1_000_000;
        while self
            .conns
            .iter()
            .flatten()
            .any(|c| c.awaiting && c.state == State::Open)
            && wire::mono_ns() < deadline
        {
            self.turn(events, Some(deadline))?;
        }
        let tag = if self.app.is_some_and(App::fanout) {
            "sent"
        } else {
            "done"
        };
        report(tag, &self.stats);
        Ok(())
    }

    /// Fanout: waits until every receiving connection got the messages
    /// `expected` of it (an application's writer is not one: it is not
    /// subscribed; but a member of a room is, sender or not).
    fn drain(&mut self, expected: impl Fn(&Conn) -> u64, events: &mut Events) -> io::Result<()> {
        let deadline = wire::mono_ns() + self.cfg.drain_ms * 1_000_000;
        let all_in = |g: &Gen| {
            g.receivers()
                .all(|c| c.received >= expected(c) || c.state == State::Dead)
        };
        while !all_in(self) && wire::mono_ns() < deadline {
            self.turn(events, Some(deadline))?;
        }
        let (lost, extra) = self.receivers().fold((0, 0), |(l, d), c| {
            (
                l + expected(c).saturating_sub(c.received),
                d + c.received.saturating_sub(expected(c)),
            )
        });
        self.stats.lost += lost;
        self.stats.duplicated += extra;
        report("done", &self.stats);
        Ok(())
    }

    /// The connections a fanout delivers to: all of them, but an
    /// application's writers, which are not subscribed.
    fn receivers(&self) -> impl Iterator<Item = &Conn> {
        let writers_listen = self.app.is_none_or(App::rooms);
        self.conns
            .iter()
            .flatten()
            .filter(move |c| writers_listen || c.sender.is_none())
    }

    /// Rate mode: sends every message that is due, stamped with its due time.
    fn send_due(&mut self, period: u64) {
        let now = wire::mono_ns();
        for k in 0..self.senders.len() {
            let i = self.senders[k];
            let end = self.window.end;
            while let Some(c) = self.conns[i]
                .as_mut()
                .filter(|c| c.state == State::Open && c.next_due <= now && c.next_due < end)
            {
                let due = c.next_due;
                c.next_due += period;
                self.send_next(i, due);
            }
        }
    }

    /// Sends connection `i`'s next bench message stamped `ts` (an
    /// application's next request carrying it).
    fn send_next(&mut self, i: usize, ts: u64) {
        if let Some(app) = self.app {
            return self.app_send(app, i, ts);
        }
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let id = c.sender.unwrap_or(0);
        wire::write_payload(&mut self.msg, id, c.seq, ts);
        c.seq = c.seq.wrapping_add(1);
        c.awaiting = true;
        wire::encode_frame(&mut c.wbuf, wire::OP_TEXT, &self.msg, &mut self.rng);
        self.stats.sent += 1;
        flush(c);
    }

    /// One poll turn: waits at most until `until` (or 100 ms), handles events.
    fn turn(&mut self, events: &mut Events, until: Option<u64>) -> io::Result<()> {
        let now = wire::mono_ns();
        let mut timeout = Duration::from_millis(100);
        if let Some(t) = until {
            timeout = timeout.min(Duration::from_nanos(t.saturating_sub(now)));
        }
        if self.running && self.cfg.rate_per_sender > 0.0 {
            let conns = &self.conns;
            let next = self
                .senders
                .iter()
                .filter_map(|&i| conns[i].as_ref())
                .map(|c| c.next_due)
                .min();
            if let Some(next) = next {
                timeout = timeout.min(Duration::from_nanos(next.saturating_sub(now)));
            }
        }
        match self.poll.poll(events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            r => r?,
        }
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            self.ready(ev.token().0);
        }
        Ok(())
    }

    /// Stdin closed: close every connection politely, bounded by 2 s.
    fn close_all(&mut self, events: &mut Events) -> io::Result<()> {
        for c in self.conns.iter_mut().flatten() {
            if c.state == State::Open {
                connection::begin_close(c, &mut self.rng);
            }
        }
        let deadline = wire::mono_ns() + 2_000_000_000;
        while self
            .conns
            .iter()
            .flatten()
            .any(|c| c.state == State::Closing)
            && wire::mono_ns() < deadline
        {
            self.turn(events, Some(deadline))?;
        }
        Ok(())
    }
}
