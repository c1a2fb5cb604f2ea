//! The submitter side: a few frame-protocol connections, each keeping its
//! share of the in-flight window full of `noop` jobs. Every `accepted` is
//! followed by a `watch`; the job's latency runs from sending its `submit`
//! to receiving its `finished`. Every job must be accepted under a fresh id
//! and finish exactly once with state `succeeded`; an error frame, an
//! unexpected frame, a second `finished` or a job that never finishes
//! fails the run.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// How long a connection may go without a frame while it waits for some.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest frame accepted from the scheduler.
const MAX_FRAME: usize = 1 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct Load {
    /// Jobs in all.
    pub jobs: usize,
    /// Jobs submitted and not yet finished, over all connections.
    pub inflight: usize,
    /// Submitter connections.
    pub conns: usize,
    /// The queue the executors take.
    pub queue: String,
}

/// What one run measured.
#[derive(Debug)]
pub struct Measured {
    /// From the first `submit` sent to the last `finished` received.
    pub elapsed: Duration,
    /// Submit-to-finished latency of every job, microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl Measured {
    /// Jobs per second over the run.
    pub fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latency, milliseconds (nearest rank).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        crate::run::quantile_ms(&self.latencies_us, q)
    }
}

/// A blocking frame connection with an output buffer flushed before each
/// read, so replies to one batch of frames go out in one write.
pub struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
}

impl Conn {
    /// Connects and says `hello` as a submitter; `Err` if the answer is not
    /// `welcome`.
    pub fn submitter(addr: SocketAddr, name: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|_| stream.set_read_timeout(Some(FRAME_TIMEOUT)))
            .map_err(|e| format!("socket options: {e}"))?;
        let mut c = Conn {
            stream,
            inbuf: Vec::with_capacity(1 << 16),
            start: 0,
            out: Vec::with_capacity(1 << 16),
        };
        c.push(&json!({"type": "hello", "role": "submitter", "name": name}).to_string());
        let w = c.recv()?;
        if w["type"] != "welcome" {
            return Err(format!("hello answered {w}"));
        }
        Ok(c)
    }

    /// Queues one payload as a frame.
    pub fn push(&mut self, payload: &str) {
        self.out
            .extend_from_slice(&((payload.len() + 4) as u32).to_be_bytes());
        self.out.extend_from_slice(payload.as_bytes());
    }

    /// A complete frame already read, if any.
    fn buffered(&mut self) -> Result<Option<Value>, String> {
        let avail = &self.inbuf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if !(4..=MAX_FRAME).contains(&n) {
            return Err(format!("a frame length of {n} from the scheduler"));
        }
        if avail.len() < n {
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(&avail[4..n])
            .map_err(|e| format!("a frame that is not JSON: {e}"))?;
        self.start += n;
        Ok(Some(v))
    }

    /// The next frame: flushes what is queued, then reads.
    pub fn recv(&mut self) -> Result<Value, String> {
        loop {
            if let Some(v) = self.buffered()? {
                return Ok(v);
            }
            self.flush()?;
            if self.start > 0 {
                self.inbuf.drain(..self.start);
                self.start = 0;
            }
            let len = self.inbuf.len();
            self.inbuf.resize(len + (1 << 16), 0);
            match self.stream.read(&mut self.inbuf[len..]) {
                Ok(0) => {
                    self.inbuf.truncate(len);
                    return Err("the scheduler closed the connection".into());
                }
                Ok(n) => self.inbuf.truncate(len + n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.inbuf.truncate(len);
                    return Err(format!("no frame within {FRAME_TIMEOUT:?}"));
                }
                Err(e) => {
                    self.inbuf.truncate(len);
                    return Err(format!("read: {e}"));
                }
            }
        }
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> Result<(), String> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .map_err(|e| format!("write: {e}"))?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends `req` with a `ref` and returns the reply carrying it; other
    /// frames in between are an error (use on a quiet connection).
    pub fn request(&mut self, mut req: Value) -> Result<Value, String> {
        req["ref"] = json!("req");
        self.push(&req.to_string());
        let r = self.recv()?;
        if r["ref"] != "req" {
            return Err(format!("{req} answered by {r}"));
        }
        Ok(r)
    }
}

/// One connection's share of a run.
struct Share {
    jobs: usize,
    window: usize,
}

/// What one connection saw.
struct Seen {
    first_send: Instant,
    last_finished: Instant,
    latencies_us: Vec<u64>,
}

/// Runs `load` against the scheduler at `addr`: connects first, then all
/// connections start together.
pub fn run(addr: SocketAddr, load: &Load) -> Result<Measured, String> {
    let conns = load.conns.clamp(1, load.jobs.max(1));
    let window = (load.inflight / conns).max(1);
    let mut clients = Vec::new();
    for i in 0..conns {
        let jobs = load.jobs / conns + usize::from(i < load.jobs % conns);
        let c = Conn::submitter(addr, &format!("bench-{i}"))?;
        clients.push((c, Share { jobs, window }));
    }
    let barrier = Arc::new(Barrier::new(conns));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (c, share))| {
            let barrier = Arc::clone(&barrier);
            let queue = load.queue.clone();
            std::thread::spawn(move || {
                barrier.wait();
                drive(c, &share, &queue).map_err(|e| format!("connection {i}: {e}"))
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(s)) => seen.push(s),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a submitter thread panicked".into()),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let first = seen.iter().map(|s| s.first_send).min();
    let last = seen.iter().map(|s| s.last_finished).max();
    let elapsed = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    let mut latencies_us: Vec<u64> = seen.into_iter().flat_map(|s| s.latencies_us).collect();
    latencies_us.sort_unstable();
    Ok(Measured {
        elapsed,
        latencies_us,
    })
}

/// Where one job of a connection is.
#[derive(Clone, Copy, Default)]
struct Job {
    sent: Option<Instant>,
    accepted: bool,
    finished: u32,
}

/// Keeps `share.window` jobs in flight until `share.jobs` have finished,
/// checking every frame; then a `ping` drains what may still come.
fn drive(mut c: Conn, share: &Share, queue: &str) -> Result<Seen, String> {
    let mut jobs = vec![Job::default(); share.jobs];
    let mut by_id: HashMap<String, usize> = HashMap::with_capacity(share.jobs);
    let mut latencies_us = Vec::with_capacity(share.jobs);
    let mut next = 0;
    let mut done = 0;
    let queue_json = Value::from(queue).to_string();
    let submit = |c: &mut Conn, jobs: &mut [Job], i: usize| {
        c.push(&format!(
            r#"{{"type":"submit","queue":{queue_json},"payload":{{"kind":"noop"}},"ref":"s{i}"}}"#
        ));
        jobs[i].sent = Some(Instant::now());
    };
    let first_send = Instant::now();
    while next < share.jobs.min(share.window) {
        submit(&mut c, &mut jobs, next);
        next += 1;
    }
    let mut last_finished = first_send;
    let mut pinged = false;
    loop {
        if done == share.jobs && !pinged {
            c.push(r#"{"type":"ping","ref":"drain"}"#);
            pinged = true;
        }
        let f = match c.recv() {
            Ok(f) => f,
            Err(e) => {
                let missing = jobs.iter().filter(|j| j.finished == 0).count();
                return Err(format!("{e}; {missing} of {} jobs unfinished", share.jobs));
            }
        };
        match f["type"].as_str().unwrap_or("") {
            "accepted" => {
                let i = ref_index(&f, "s", share.jobs)?;
                let id = f["job"].as_str().ok_or_else(|| format!("no job id: {f}"))?;
                if f["duplicate"] != false || jobs[i].accepted {
                    return Err(format!("submit {i} accepted twice or as a duplicate: {f}"));
                }
                if by_id.insert(id.to_string(), i).is_some() {
                    return Err(format!("job id {id} given to two submits"));
                }
                jobs[i].accepted = true;
                c.push(&format!(
                    r#"{{"type":"watch","job":{},"ref":"w{i}"}}"#,
                    Value::from(id)
                ));
            }
            "watching" => {
                ref_index(&f, "w", share.jobs)?;
            }
            "finished" => {
                let now = Instant::now();
                let id = f["job"].as_str().unwrap_or("");
                let &i = by_id
                    .get(id)
                    .ok_or_else(|| format!("finished for a job not submitted here: {f}"))?;
                if f["state"] != "succeeded" {
                    return Err(format!("job {id} ended {f}"));
                }
                let job = &mut jobs[i];
                job.finished += 1;
                if job.finished > 1 {
                    return Err(format!("job {id} finished {} times", job.finished));
                }
                let sent = job.sent.ok_or("finished before sent")?;
                latencies_us.push(now.duration_since(sent).as_micros() as u64);
                last_finished = now;
                done += 1;
                if next < share.jobs {
                    submit(&mut c, &mut jobs, next);
                    next += 1;
                }
            }
            "pong" if pinged && f["ref"] == "drain" => break,
            _ => return Err(format!("unexpected frame {f}")),
        }
    }
    Ok(Seen {
        first_send,
        last_finished,
        latencies_us,
    })
}

/// The index in a reply's `ref` (`PREFIX` then a number below `n`).
fn ref_index(f: &Value, prefix: &str, n: usize) -> Result<usize, String> {
    f["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix(prefix))
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|&i| i < n)
        .ok_or_else(|| format!("a reply with an unknown ref: {f}"))
}
