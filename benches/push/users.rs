//! The WebSocket users (chat protocol v1.1), one tokio task each on the
//! bench's runtime, and the tallies of what reached them.
//!
//! User `i` logs in as [`uid`]`(i)` and joins a room of the same name (its
//! own: a `say` there reaches the broker's exchange and the user alone).
//! It counts every `{"type": "bench", "row", "n", "t"}` text it receives
//! (the `data` of a push) in its row's [`Tally`], and on [`Cmd::Say`] says
//! numbered messages in its room, keeping a few unacked, counting acks.
//! Anything unexpected (an `error`, a close, a frame that is not JSON, a
//! push meant for another user) is a protocol error on the [`Board`].

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Microseconds since the bench started: the clock of every `t`.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// User `i`'s login name (its uid) and room.
pub fn uid(i: usize) -> String {
    format!("u{i:04}")
}

/// The arrivals of messages numbered `0..n`, each expected once.
pub struct Tally {
    counts: Vec<AtomicU32>,
    unique: AtomicUsize,
    dups: AtomicUsize,
    /// Numbers out of range, or delivered to the wrong user.
    stray: AtomicUsize,
    last_us: AtomicU64,
    /// `t` to arrival, of each first arrival.
    lat_us: Mutex<Vec<u64>>,
}

impl Tally {
    /// For `n` messages.
    pub fn new(n: usize) -> Tally {
        Tally {
            counts: (0..n).map(|_| AtomicU32::new(0)).collect(),
            unique: AtomicUsize::new(0),
            dups: AtomicUsize::new(0),
            stray: AtomicUsize::new(0),
            last_us: AtomicU64::new(0),
            lat_us: Mutex::new(Vec::with_capacity(n)),
        }
    }

    /// Message `n`, stamped `sent_us`, arrived now (`right`: where it was
    /// addressed).
    pub fn record(&self, n: u64, sent_us: u64, right: bool) {
        let now = now_us();
        self.last_us.fetch_max(now, Relaxed);
        let Some(count) = self.counts.get(n as usize) else {
            self.stray.fetch_add(1, Relaxed);
            return;
        };
        if !right {
            self.stray.fetch_add(1, Relaxed);
        }
        if count.fetch_add(1, Relaxed) == 0 {
            self.unique.fetch_add(1, Relaxed);
            self.lat_us
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(now.saturating_sub(sent_us));
        } else {
            self.dups.fetch_add(1, Relaxed);
        }
    }

    /// Messages expected.
    pub fn expected(&self) -> usize {
        self.counts.len()
    }

    /// Distinct messages arrived.
    pub fn unique(&self) -> usize {
        self.unique.load(Relaxed)
    }

    /// Arrivals beyond the first of a message.
    pub fn dups(&self) -> usize {
        self.dups.load(Relaxed)
    }

    /// Arrivals out of range or at the wrong user.
    pub fn stray(&self) -> usize {
        self.stray.load(Relaxed)
    }

    /// When the last arrival came ([`now_us`]).
    pub fn last_us(&self) -> u64 {
        self.last_us.load(Relaxed)
    }

    /// The latencies of first arrivals, sorted, microseconds.
    pub fn latencies(&self) -> Vec<u64> {
        let mut v = self
            .lat_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_unstable();
        v
    }
}

/// What the users (and the bench's consumer) count, and their errors.
pub struct Board {
    /// Users.
    pub users: usize,
    /// Row 1: pushes through RabbitMQ, at the users.
    pub amqp: Tally,
    /// Row 2: acks of the users' `say`s (latency: say to ack).
    pub acks: Tally,
    /// Row 2: the stored messages at the bench's consumer of
    /// `chat.messages` (latency: say to event).
    pub events: Tally,
    /// Row 3: pushes through `POST /api/publish`, at the users.
    pub http: Tally,
    /// Users logged in and in their room.
    pub ready: AtomicUsize,
    errors: Mutex<Vec<String>>,
    error_count: AtomicUsize,
}

impl Board {
    /// For `users` users and the rows' message counts.
    pub fn new(users: usize, amqp: usize, says: usize, http: usize) -> Board {
        Board {
            users,
            amqp: Tally::new(amqp),
            acks: Tally::new(says),
            events: Tally::new(says),
            http: Tally::new(http),
            ready: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicUsize::new(0),
        }
    }

    /// A protocol error (the first 20 are kept).
    pub fn error(&self, e: String) {
        if self.error_count.fetch_add(1, Relaxed) < 20 {
            self.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(e);
        }
    }

    /// How many protocol errors.
    pub fn error_count(&self) -> usize {
        self.error_count.load(Relaxed)
    }

    /// The errors, as one text (empty without any).
    pub fn errors(&self) -> String {
        let kept = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.error_count();
        if n == 0 {
            return String::new();
        }
        format!("{n} protocol error(s), first: {}", kept.join("; "))
    }

    /// The push tally of `row` (1 or 3).
    fn push_row(&self, row: u64) -> Option<&Tally> {
        match row {
            1 => Some(&self.amqp),
            3 => Some(&self.http),
            _ => None,
        }
    }
}

/// What a user is told to do.
pub enum Cmd {
    /// Say these numbered messages in its room, at most `window` unacked.
    Say { ns: Vec<u64>, window: usize },
    /// Close the connection (code 1000) and end.
    Close,
}

/// The users' tasks and their command channels.
pub struct Users {
    cmds: Vec<mpsc::UnboundedSender<Cmd>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long a user may take to connect, log in and join.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Users {
    /// Starts `board.users` users against `addr`, at most `concurrency`
    /// of them connecting and logging in at once. They count themselves
    /// in `board.ready` when in their room.
    pub fn start(addr: SocketAddr, board: &Arc<Board>, concurrency: usize) -> Users {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut cmds = Vec::with_capacity(board.users);
        let mut tasks = Vec::with_capacity(board.users);
        for i in 0..board.users {
            let (tx, rx) = mpsc::unbounded_channel();
            let board = board.clone();
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = user(i, addr, &board, rx, gate).await {
                    board.error(format!("{}: {e}", uid(i)));
                }
            }));
            cmds.push(tx);
        }
        Users { cmds, tasks }
    }

    /// Tells user `i` to do `cmd`.
    pub fn tell(&self, i: usize, cmd: Cmd) {
        // A user that ended has reported why on the board.
        let _ = self.cmds[i].send(cmd);
    }

    /// Closes every connection and waits (bounded) for the tasks to end.
    pub async fn close(self) {
        for c in &self.cmds {
            let _ = c.send(Cmd::Close);
        }
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

/// One user: connect, log in, join, then serve frames and commands.
async fn user(
    i: usize,
    addr: SocketAddr,
    board: &Board,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    gate: Arc<Semaphore>,
) -> Result<(), String> {
    let name = uid(i);
    let mut ws = {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(LOGIN_TIMEOUT, login(addr, &name))
            .await
            .map_err(|_| format!("not logged in and joined within {LOGIN_TIMEOUT:?}"))??
    };
    board.ready.fetch_add(1, Relaxed);
    let mut todo: VecDeque<u64> = VecDeque::new();
    let mut window = 1;
    // Says sent and not acked: ref (the number) -> when sent.
    let mut unacked: HashMap<u64, u64> = HashMap::new();
    loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
                    Some(Ok(Message::Binary(_))) => return Err("a binary frame".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the connection ended".into()),
                };
                let v: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("not JSON ({e}): {}", text.as_str()))?;
                match v["type"].as_str() {
                    Some("bench") => {
                        let (row, n, t) = (num(&v, "row")?, num(&v, "n")?, num(&v, "t")?);
                        let tally = board.push_row(row).ok_or_else(|| format!("row {row}: {v}"))?;
                        tally.record(n, t, n as usize % board.users == i);
                    }
                    Some("ack") => {
                        let n: u64 = v["ref"]
                            .as_str()
                            .and_then(|r| r.parse().ok())
                            .ok_or_else(|| format!("an ack without our ref: {v}"))?;
                        if v["id"].as_i64().is_none_or(|id| id <= 0) {
                            return Err(format!("an ack without an id: {v}"));
                        }
                        let sent = unacked
                            .remove(&n)
                            .ok_or_else(|| format!("an ack of {n}, not unacked: {v}"))?;
                        board.acks.record(n, sent, true);
                        say_more(&mut ws, &name, &mut todo, &mut unacked, window).await?;
                    }
                    // Its own says, back from its room; the clock.
                    Some("message" | "tick") => {}
                    _ => return Err(format!("unexpected: {v}")),
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Say { ns, window: w }) => {
                    todo.extend(ns);
                    window = w.max(1);
                    say_more(&mut ws, &name, &mut todo, &mut unacked, window).await?;
                }
                Some(Cmd::Close) | None => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
            }
        }
    }
}

/// A field that must be a non-negative integer.
fn num(v: &Value, field: &str) -> Result<u64, String> {
    v[field]
        .as_u64()
        .ok_or_else(|| format!("no {field} in {v}"))
}

/// Connects, logs in as `name` and joins room `name`.
async fn login(addr: SocketAddr, name: &str) -> Result<Ws, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    for (request, want) in [
        (json!({"type": "login", "name": name}), "welcome"),
        (json!({"type": "join", "room": name}), "joined"),
    ] {
        ws.send(Message::text(request.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let frame = ws
                .next()
                .await
                .ok_or("the connection ended")?
                .map_err(|e| e.to_string())?;
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
            match v["type"].as_str() {
                Some(ty) if ty == want => break,
                Some("tick" | "presence") => {}
                _ => return Err(format!("{request} answered {}", t.as_str())),
            }
        }
    }
    Ok(ws)
}

/// Says the next numbers of `todo` while fewer than `window` are unacked
/// (text `"N T"`, ref `"N"`), in one flush.
async fn say_more(
    ws: &mut Ws,
    room: &str,
    todo: &mut VecDeque<u64>,
    unacked: &mut HashMap<u64, u64>,
    window: usize,
) -> Result<(), String> {
    let mut fed = false;
    while unacked.len() < window {
        let Some(n) = todo.pop_front() else { break };
        let t = now_us();
        let say =
            json!({"type": "say", "room": room, "text": format!("{n} {t}"), "ref": n.to_string()});
        unacked.insert(n, t);
        ws.feed(Message::text(say.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        fed = true;
    }
    if fed {
        ws.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Records a `message` event from the broker (row 2) in `board.events`:
/// its text is `"N T"` as said by user `N % users`.
pub fn record_event(board: &Board, body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "an event that is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    let parsed = v["text"].as_str().and_then(|t| {
        let (n, t) = t.split_once(' ')?;
        Some((n.parse::<u64>().ok()?, t.parse::<u64>().ok()?))
    });
    let (Some("message"), Some((n, t))) = (v["type"].as_str(), parsed) else {
        return Err(format!("an event not of ours: {v}"));
    };
    let from = uid(n as usize % board.users.max(1));
    board.events.record(
        n,
        t,
        v["from"] == from.as_str() && v["room"] == from.as_str(),
    );
    Ok(())
}
