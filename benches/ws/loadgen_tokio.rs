//! The second load generator (`--client tokio`): the same line protocol,
//! scenarios and payload as [`crate::loadgen`], but written the way a
//! tokio user would write a client: one current-thread runtime per
//! process, one task per connection, tokio-tungstenite for the protocol,
//! `send` (a write per message) for every frame.
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

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::loadgen::{command_words, LoadConfig, Stats, Window, SOURCE_ADDRS};
use crate::wire::{self, mono_ns};

type Ws = WebSocketStream<TcpStream>;

/// What the connections are told to do.
#[derive(Clone, Copy)]
enum Phase {
    /// Connected, waiting for `run`.
    Wait,
    /// Drive the scenario: senders start at `start`.
    Run { start: u64, window: Window },
    /// Close with 1000 and end.
    Close,
}

/// What every connection task shares (one thread: no locks).
struct Shared {
    stats: Stats,
    /// Messages received over the whole run, per connection.
    received: Vec<u64>,
    /// Connections with a message of theirs in flight (echo, saturation).
    awaiting: usize,
    /// Fanout: what each receiver must reach in the drain (`expect N`).
    expected: Option<u64>,
    /// Connections the server closed.
    dead: Vec<bool>,
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
    tokio_tungstenite::client_async(url, stream)
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

async fn drive(
    cfg: Rc<LoadConfig>,
    mut commands: mpsc::UnboundedReceiver<String>,
) -> io::Result<()> {
    let settled = Rc::new(Notify::new());
    let shared = Rc::new(RefCell::new(Shared {
        stats: Stats::default(),
        received: vec![0; cfg.conns],
        awaiting: 0,
        expected: None,
        dead: vec![false; cfg.conns],
        settled: Rc::clone(&settled),
    }));
    let (phase_tx, phase_rx) = watch::channel(Phase::Wait);
    let churn = cfg.scenario == "churn";
    let mut tasks = Vec::new();
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
                    let conn = Conn::new(i, sender, &cfg, Rc::clone(&shared));
                    tasks.push(tokio::task::spawn_local(conn.run(ws, phase_rx.clone())));
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
                let _ = phase_tx.send(Phase::Run {
                    start: *start,
                    window,
                });
                tokio::time::sleep_until(at(window.end)).await;
                if cfg.scenario == "fanout" {
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
    // Stdin closed: every connection closes with 1000, bounded by 2 s.
    let _ = phase_tx.send(Phase::Close);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::future::join_all(tasks),
    )
    .await;
    Ok(())
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
                            let _ = ws.close(None).await;
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

/// One connection's state, driven by its own task.
struct Conn {
    index: usize,
    sender: Option<u32>,
    cfg: Rc<LoadConfig>,
    shared: Rc<RefCell<Shared>>,
    /// Fanout: next expected sequence per global sender.
    expect: Vec<u32>,
    seq: u32,
    awaiting: bool,
    /// Rate mode: when the next message is due (ns); `u64::MAX`: none.
    next_due: u64,
    window: Option<Window>,
    msg: Vec<u8>,
}

impl Conn {
    fn new(
        index: usize,
        sender: Option<u32>,
        cfg: &Rc<LoadConfig>,
        shared: Rc<RefCell<Shared>>,
    ) -> Conn {
        Conn {
            index,
            sender,
            expect: if cfg.scenario == "fanout" {
                vec![0; cfg.senders_total as usize]
            } else {
                Vec::new()
            },
            seq: 0,
            awaiting: false,
            next_due: u64::MAX,
            window: None,
            msg: vec![0; cfg.size.max(wire::PAYLOAD_MIN)],
            cfg: Rc::clone(cfg),
            shared,
        }
    }

    /// Rate mode's period in ns; 0 for a closed loop (echo, saturation).
    fn period(&self) -> u64 {
        if self.cfg.scenario == "fanout" && self.cfg.rate_per_sender > 0.0 {
            (1e9 / self.cfg.rate_per_sender) as u64
        } else {
            0
        }
    }

    async fn run(mut self, mut ws: Ws, mut phase: watch::Receiver<Phase>) {
        let period = self.period();
        loop {
            let due = self
                .window
                .filter(|w| period > 0 && self.next_due < w.end)
                .map(|_| at(self.next_due));
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now_phase = *phase.borrow();
                    match now_phase {
                        Phase::Run { start, window } => {
                            self.window = Some(window);
                            if let Some(id) = self.sender {
                                if period > 0 {
                                    let total = self.cfg.senders_total.max(1) as u64;
                                    self.next_due = start + period * id as u64 / total;
                                } else {
                                    tokio::time::sleep_until(at(start)).await;
                                    if self.send(&mut ws, mono_ns()).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        Phase::Close => {
                            let _ = ws.close(None).await;
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(Ok(_)) = ws.next().await {}
                            })
                            .await;
                            return;
                        }
                        Phase::Wait => {}
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let ts = self.next_due;
                    self.next_due += period;
                    if self.send(&mut ws, ts).await.is_err() {
                        break;
                    }
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if self.message(&mut ws, t.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        if self.message(&mut ws, &b).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
        // The server closed or broke the connection.
        let mut s = self.shared.borrow_mut();
        s.stats.closed_by_server += 1;
        s.dead[self.index] = true;
        if self.awaiting {
            s.awaiting -= 1;
        }
        s.settled.notify_one();
    }

    /// Sends the next bench message stamped `ts`.
    async fn send(&mut self, ws: &mut Ws, ts: u64) -> Result<(), ()> {
        let id = self.sender.unwrap_or(0);
        wire::write_payload(&mut self.msg, id, self.seq, ts);
        self.seq = self.seq.wrapping_add(1);
        if !self.awaiting {
            self.awaiting = true;
            self.shared.borrow_mut().awaiting += 1;
        }
        self.shared.borrow_mut().stats.sent += 1;
        // The payload is ASCII (hex digits and padding).
        let text = String::from_utf8_lossy(&self.msg).into_owned();
        ws.send(Message::text(text)).await.map_err(|_| ())
    }

    /// A message arrived: counted, its order checked; in a closed loop,
    /// our own one back sends the next.
    async fn message(&mut self, ws: &mut Ws, payload: &[u8]) -> Result<(), ()> {
        let now = mono_ns();
        let w = self.window.unwrap_or_default();
        let parsed = wire::read_payload(payload);
        {
            let mut s = self.shared.borrow_mut();
            s.stats.delivery(w, now, parsed.map(|p| p.2));
            s.received[self.index] += 1;
            if s.expected == Some(s.received[self.index]) {
                s.settled.notify_one();
            }
            if let Some((sender, seq, _)) = parsed {
                s.stats.check_order(&mut self.expect, sender, seq);
            }
        }
        let Some((sender, seq, _)) = parsed else {
            return Ok(());
        };
        let mine = self.sender == Some(sender) && self.awaiting && seq.wrapping_add(1) == self.seq;
        if !mine {
            return Ok(());
        }
        self.awaiting = false;
        {
            let mut s = self.shared.borrow_mut();
            s.awaiting -= 1;
            if s.awaiting == 0 {
                s.settled.notify_one();
            }
        }
        if self.period() == 0 && w.end > 0 && now < w.end {
            self.send(ws, now).await?;
        }
        Ok(())
    }
}
