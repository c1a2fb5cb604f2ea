//! The second load generator (`--client tokio`): the same line protocol,
//! scenarios and payload as [`crate::loadgen`], but written the way a
//! tokio user would write a client: one current-thread runtime per
//! process, tokio-tungstenite (defaults but a 4 KiB read buffer), each
//! WebSocket split (`StreamExt::split`) into a read half that its own task
//! drives (`while let Some(m) = stream.next().await`) and a write half,
//! and `send` (a write and a flush) for every frame.
//!
//! A connection that sends gets a sender task at `run` too: at a rate it
//! sends every message on its own `sleep_until`; in a closed loop (echo,
//! fan-out saturation) it sends the first, and the reader sends each next
//! one when its own comes back, through the write half they share (a
//! `tokio::sync::Mutex`). A connection that only receives does nothing
//! but read. When stdin closes, the driver closes every write half
//! (status 1000) and the readers read to the end, within 2 s.
//!
//! It is the bench binary started as `ws loadgen-tokio '<json LoadConfig>'`.
//! Our own generator batches its writes in one mio loop; a server whose
//! tail only holds under that generator's pacing would show it here. It
//! plays `idle`, `echo`, `fanout` (rate and saturation) and `churn`; the
//! applications' scenarios are our own generator's only.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Mutex, Notify, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::loadgen::{command_words, LoadConfig, Stats, Window, SOURCE_ADDRS};
use crate::wire::{self, mono_ns};

type Ws = WebSocketStream<TcpStream>;

/// Each connection's read buffer: 4 KiB, as tungstenite's documentation
/// suggests for many connections, not its default 128 KiB (the one
/// setting changed from the defaults). tungstenite
/// zero-fills the buffer's free capacity before every read (the one that
/// finds the socket empty too), so at 128 KiB `memset` was a quarter of
/// this client's cycles in `fanout-rate` (`perf record`), where frames
/// are 66 bytes and a read finds few.
const READ_BUFFER: usize = 4 * 1024;

/// A connection's write half, shared by its sender task, its reader (a
/// closed loop's next message) and the driver (close).
type Out = Rc<Mutex<Writer>>;

/// What every connection task shares (one thread: no locks).
struct Shared {
    stats: Stats,
    /// The window deliveries count against (set at `run`).
    window: Window,
    /// Messages received over the whole run, per connection.
    received: Vec<u64>,
    /// Closed loops: the sequence each connection has in flight.
    in_flight: Vec<Option<u32>>,
    /// Connections with a message of theirs in flight (echo, saturation).
    awaiting: usize,
    /// Fanout: what each receiver must reach in the drain (`expect N`).
    expected: Option<u64>,
    /// Connections the server closed.
    dead: Vec<bool>,
    /// Stdin closed: the driver is closing every connection.
    closing: bool,
    /// Woken when a receiver reaches `expected` or a closed loop settles.
    settled: Rc<Notify>,
}

/// The tokio `Instant` at CLOCK_MONOTONIC nanosecond `ns` (tokio's clock
/// is CLOCK_MONOTONIC too).
fn at(ns: u64) -> Instant {
    Instant::now() + Duration::from_nanos(ns.saturating_sub(mono_ns()))
}

/// Connects connection `global` from its source address and upgrades.
async fn open(cfg: &LoadConfig, global: usize) -> Option<Ws> {
    let socket = TcpSocket::new_v4().ok()?;
    let src = Ipv4Addr::new(127, 0, 0, 2 + (global % SOURCE_ADDRS) as u8);
    socket.bind(SocketAddr::from((src, 0))).ok()?;
    let stream = socket.connect(cfg.target).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let url = format!("ws://{}/", cfg.target);
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// Entry point of a tokio load generator child.
pub fn main(arg: &str) -> io::Result<()> {
    let cfg: LoadConfig = serde_json::from_str(arg).map_err(io::Error::other)?;
    if !matches!(cfg.scenario.as_str(), "idle" | "echo" | "fanout" | "churn") {
        return Err(io::Error::other(format!(
            "the tokio client does not play {:?}",
            cfg.scenario
        )));
    }
    crate::raise_nofile_limit();
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, drive(Rc::new(cfg), rx))
}

fn report(tag: &str, stats: &Stats) {
    let json = serde_json::to_string(stats).unwrap_or_default();
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{tag} {json}");
    let _ = out.flush();
}

/// Rate mode's period in ns; 0 for a closed loop (echo, saturation).
fn period(cfg: &LoadConfig) -> u64 {
    if cfg.scenario == "fanout" && cfg.rate_per_sender > 0.0 {
        (1e9 / cfg.rate_per_sender) as u64
    } else {
        0
    }
}

async fn drive(
    cfg: Rc<LoadConfig>,
    mut commands: mpsc::UnboundedReceiver<String>,
) -> io::Result<()> {
    let settled = Rc::new(Notify::new());
    let shared = Rc::new(RefCell::new(Shared {
        stats: Stats::default(),
        window: Window::default(),
        received: vec![0; cfg.conns],
        in_flight: vec![None; cfg.conns],
        awaiting: 0,
        expected: None,
        dead: vec![false; cfg.conns],
        closing: false,
        settled: Rc::clone(&settled),
    }));
    let churn = cfg.scenario == "churn";
    let period = period(&cfg);
    // Every connection's write half, with its sender id if it sends.
    let mut outs: Vec<(Option<u32>, Out)> = Vec::new();
    let mut readers = Vec::new();
    if !churn {
        let t0 = mono_ns();
        let deadline = at(t0 + cfg.deadline_ms * 1_000_000);
        let gate = Rc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
        let mut connects = Vec::new();
        for i in 0..cfg.conns {
            let (cfg, gate) = (Rc::clone(&cfg), Rc::clone(&gate));
            connects.push(tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await.ok()?;
                let ws = tokio::time::timeout_at(deadline, open(&cfg, cfg.conn_base + i)).await;
                ws.ok().flatten().map(|ws| (ws, mono_ns()))
            }));
        }
        let mut last = t0;
        for (i, c) in connects.into_iter().enumerate() {
            match c.await.ok().flatten() {
                Some((ws, done)) => {
                    last = last.max(done);
                    shared.borrow_mut().stats.connected += 1;
                    let sender = match cfg.scenario.as_str() {
                        "echo" => Some((cfg.conn_base + i) as u32),
                        "fanout" if i < cfg.senders => Some(cfg.sender_base + i as u32),
                        _ => None,
                    };
                    let (sink, stream) = ws.split();
                    let out = Rc::new(Mutex::new(Writer {
                        sink,
                        index: i,
                        id: sender.unwrap_or(0),
                        closed_loop: period == 0,
                        seq: 0,
                        msg: vec![0; cfg.size.max(wire::PAYLOAD_MIN)],
                    }));
                    let reader = Reader {
                        index: i,
                        looped: sender
                            .filter(|_| period == 0)
                            .map(|id| (id, Rc::clone(&out))),
                        shared: Rc::clone(&shared),
                        expect: if cfg.scenario == "fanout" {
                            vec![0; cfg.senders_total as usize]
                        } else {
                            Vec::new()
                        },
                    };
                    readers.push(tokio::task::spawn_local(reader.run(stream)));
                    outs.push((sender, out));
                }
                None => shared.borrow_mut().stats.failed += 1,
            }
        }
        shared.borrow_mut().stats.connect_ns = last.saturating_sub(t0).max(1);
    }
    report("ready", &shared.borrow().stats);
    while let Some(line) = commands.recv().await {
        let (verb, words) = command_words(&line);
        match (verb, words.as_slice()) {
            (Some("run"), [start, warm, measure]) => {
                let window = Window {
                    measure: start + warm,
                    end: start + warm + measure,
                };
                if churn {
                    churn_window(&cfg, &shared, *start, window).await;
                    report("done", &shared.borrow().stats);
                    continue;
                }
                shared.borrow_mut().window = window;
                let mut senders = Vec::new();
                for (id, out) in &outs {
                    if let Some(id) = *id {
                        let first = match period {
                            0 => *start,
                            p => start + p * id as u64 / cfg.senders_total.max(1) as u64,
                        };
                        let out = Rc::clone(out);
                        let shared = Rc::clone(&shared);
                        let task = send_loop(out, shared, first, period, window.end);
                        senders.push(tokio::task::spawn_local(task));
                    }
                }
                tokio::time::sleep_until(at(window.end)).await;
                if cfg.scenario == "fanout" {
                    // A sender behind its timer still sends what was due
                    // before the end: `sent` counts it.
                    let deadline = at(mono_ns() + cfg.drain_ms * 1_000_000);
                    let all = futures_util::future::join_all(senders.iter_mut());
                    let _ = tokio::time::timeout_at(deadline, all).await;
                    // One still behind after the bound sends nothing more.
                    senders.iter().for_each(|t| t.abort());
                    report("sent", &shared.borrow().stats);
                    continue;
                }
                // Echo: the messages in flight come back, within the bound.
                let deadline = at(mono_ns() + cfg.drain_ms * 1_000_000);
                while shared.borrow().awaiting > 0 {
                    if tokio::time::timeout_at(deadline, settled.notified())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                report("done", &shared.borrow().stats);
            }
            (Some("expect"), [n]) => {
                shared.borrow_mut().expected = Some(*n);
                let deadline = at(mono_ns() + cfg.drain_ms * 1_000_000);
                let all_in = |s: &Shared| {
                    s.received
                        .iter()
                        .zip(&s.dead)
                        .all(|(r, dead)| *r >= *n || *dead)
                };
                while !all_in(&shared.borrow()) {
                    if tokio::time::timeout_at(deadline, settled.notified())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                let mut s = shared.borrow_mut();
                let (lost, extra) = s.received.iter().fold((0, 0), |(l, d), r| {
                    (l + n.saturating_sub(*r), d + r.saturating_sub(*n))
                });
                s.stats.lost += lost;
                s.stats.duplicated += extra;
                report("done", &s.stats);
            }
            _ => {
                return Err(io::Error::other(format!(
                    "loadgen-tokio: bad command {line:?}"
                )))
            }
        }
    }
    // Stdin closed: every connection closes with 1000 and its reader reads
    // the server's close, bounded by 2 s.
    shared.borrow_mut().closing = true;
    let close = async {
        futures_util::future::join_all(outs.iter().map(|(_, out)| async move {
            let mut out = out.lock().await;
            let _ = out.sink.send(Message::Close(Some(normal_close()))).await;
            let _ = out.sink.close().await;
        }))
        .await;
        futures_util::future::join_all(readers).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
    Ok(())
}

/// A close frame with code 1000 (`close(None)` would send none: 1005).
fn normal_close() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }
}

/// Churn: `conns` loops, each opening, upgrading and closing a connection
/// until the window ends; upgrades inside the window count.
async fn churn_window(cfg: &Rc<LoadConfig>, shared: &Rc<RefCell<Shared>>, start: u64, w: Window) {
    tokio::time::sleep_until(at(start)).await;
    shared.borrow_mut().stats.connected = 0;
    let loops: Vec<_> = (0..cfg.conns.max(1))
        .map(|k| {
            let (cfg, shared) = (Rc::clone(cfg), Rc::clone(shared));
            tokio::task::spawn_local(async move {
                let mut n = 0;
                while mono_ns() < w.end {
                    let attempt =
                        tokio::time::timeout_at(at(w.end), open(&cfg, cfg.conn_base + k + n));
                    n += cfg.conns.max(1);
                    match attempt.await {
                        Ok(Some(mut ws)) => {
                            if w.contains(mono_ns()) {
                                shared.borrow_mut().stats.connected += 1;
                            }
                            let _ = ws.close(Some(normal_close())).await;
                        }
                        Ok(None) => shared.borrow_mut().stats.failed += 1,
                        Err(_) => break, // the window ended mid-attempt
                    }
                }
            })
        })
        .collect();
    futures_util::future::join_all(loops).await;
}

/// A sending connection's task from `run`, its first message due at
/// `first` (ns): at a rate (`period` ns) it sends every message due before
/// `end`; in a closed loop (`period` 0) only the first, and its reader the
/// rest.
async fn send_loop(out: Out, shared: Rc<RefCell<Shared>>, first: u64, period: u64, end: u64) {
    let mut due = first;
    loop {
        tokio::time::sleep_until(at(due)).await;
        let ts = if period == 0 { mono_ns() } else { due };
        if out.lock().await.send(&shared, ts, false).await.is_err() || period == 0 {
            return;
        }
        due += period;
        if due >= end {
            return;
        }
    }
}

/// A connection's write half and what it stamps on its messages.
struct Writer {
    sink: SplitSink<Ws, Message>,
    index: usize,
    /// The global sender id in the payload.
    id: u32,
    /// Echo, saturation: a message is in flight until it comes back.
    closed_loop: bool,
    /// The next sequence number.
    seq: u32,
    msg: Vec<u8>,
}

impl Writer {
    /// Sends the next bench message stamped `ts`. `counted`: the caller
    /// already counted it as sent (and in flight), in the same borrow that
    /// decided to send it, so that a report between that decision and this
    /// send (the lock may yield) already includes it.
    async fn send(&mut self, shared: &RefCell<Shared>, ts: u64, counted: bool) -> Result<(), ()> {
        wire::write_payload(&mut self.msg, self.id, self.seq, ts);
        if !counted {
            let mut s = shared.borrow_mut();
            s.stats.sent += 1;
            if self.closed_loop && s.in_flight[self.index].replace(self.seq).is_none() {
                s.awaiting += 1;
            }
        }
        self.seq = self.seq.wrapping_add(1);
        // The payload is ASCII (hex digits and padding).
        let text = String::from_utf8_lossy(&self.msg).into_owned();
        self.sink.send(Message::text(text)).await.map_err(|_| ())
    }
}

/// A connection's read half's task: counts every message and checks its
/// order; in a closed loop, its own one back sends the next.
struct Reader {
    index: usize,
    /// Closed loop: this connection's sender id and write half.
    looped: Option<(u32, Out)>,
    shared: Rc<RefCell<Shared>>,
    /// Fanout: next expected sequence per global sender.
    expect: Vec<u32>,
}

impl Reader {
    async fn run(mut self, mut stream: SplitStream<Ws>) {
        while let Some(m) = stream.next().await {
            let sent = match m {
                Ok(Message::Text(t)) => self.message(t.as_bytes()).await,
                Ok(Message::Binary(b)) => self.message(&b).await,
                Ok(_) => Ok(()),
                Err(_) => break,
            };
            if sent.is_err() {
                break;
            }
        }
        let mut s = self.shared.borrow_mut();
        if s.closing {
            return;
        }
        // The server closed or broke the connection.
        s.stats.closed_by_server += 1;
        s.dead[self.index] = true;
        if s.in_flight[self.index].take().is_some() {
            s.awaiting -= 1;
        }
        s.settled.notify_one();
    }

    /// A message arrived: counted, its order checked; in a closed loop,
    /// our own one back sends the next (an error: the send failed).
    async fn message(&mut self, payload: &[u8]) -> Result<(), ()> {
        let now = mono_ns();
        let parsed = wire::read_payload(payload);
        let send_next = {
            let mut guard = self.shared.borrow_mut();
            let s = &mut *guard;
            s.stats.delivery(s.window, now, parsed.map(|p| p.2));
            s.received[self.index] += 1;
            if s.expected == Some(s.received[self.index]) {
                s.settled.notify_one();
            }
            let Some((sender, seq, _)) = parsed else {
                return Ok(());
            };
            s.stats.check_order(&mut self.expect, sender, seq);
            let mine = matches!(self.looped, Some((id, _)) if id == sender)
                && s.in_flight[self.index] == Some(seq);
            if !mine {
                return Ok(());
            }
            let send_next = s.window.end > 0 && now < s.window.end;
            if send_next {
                // The next one (the writer's next sequence) is sent and in
                // flight from here on.
                s.stats.sent += 1;
                s.in_flight[self.index] = Some(seq.wrapping_add(1));
            } else {
                s.in_flight[self.index] = None;
                s.awaiting -= 1;
                if s.awaiting == 0 {
                    s.settled.notify_one();
                }
            }
            send_next
        };
        match &self.looped {
            Some((_, out)) if send_next => out.lock().await.send(&self.shared, now, true).await,
            _ => Ok(()),
        }
    }
}
