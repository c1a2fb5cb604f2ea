//! The master as a supervisor, seen from outside: it refuses to fork in a
//! threaded process, respawns a worker that dies at start with a doubling
//! backoff while the other worker serves, replaces every worker one at a time
//! on `reload` without losing a connection attempt, obeys `stop` through its
//! pid file, and answers `status` and `connections` (`start -d` and the pid
//! file's lock: tests/cli.rs).

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The master's respawn schedule for a worker that dies within a second of
/// starting (src/master.rs): 100 ms, doubling, at most 10 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The backoff before respawn `i` (1-based) of a worker that keeps dying at once.
fn backoff(i: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << (i - 1).min(20))
        .min(MAX_BACKOFF)
}

/// How many respawns start within `window` of the first start when every
/// life (fork to death, noticed by the master) takes `life`.
fn respawns_within(window: Duration, life: Duration) -> u32 {
    let mut at = Duration::ZERO;
    let mut n = 0;
    loop {
        at += life + backoff(n + 1);
        if at > window {
            return n;
        }
        n += 1;
    }
}

/// A path in the temp dir for a pid or log file, removed first.
fn temp_path(what: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!(
        "foreman-supervision-{}-{n}.{what}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// A config naming a pid file, with its path.
struct ControlFiles {
    config: TempFile,
    pid_file: PathBuf,
}

impl ControlFiles {
    fn without_log(extra: &str) -> ControlFiles {
        let pid_file = temp_path("pid");
        let config = TempFile::new(
            "toml",
            &format!(
                "[server]\npid_file = {:?}\n{extra}",
                pid_file.display().to_string()
            ),
        );
        ControlFiles { config, pid_file }
    }

    fn config(&self) -> &str {
        self.config.path.to_str().expect("utf-8 temp path")
    }

    /// Runs `echo COMMAND -c CONFIG ARGS...` to its end.
    #[track_caller]
    fn echo(&self, command: &str, args: &[&str]) -> Finished {
        let mut cmd = Command::new(example("echo"));
        cmd.arg(command).arg("-c").arg(self.config()).args(args);
        run_to_exit(&mut cmd, Duration::from_secs(20))
    }
}

impl Drop for ControlFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn master_refuses_to_fork_in_a_threaded_process() {
    let mut cmd = Command::new(example("testbed"));
    cmd.args([
        "--listen",
        "websocket://127.0.0.1:0",
        "--spawn-thread-before-run",
    ]);
    let done = run_to_exit(&mut cmd, Duration::from_secs(20));
    assert!(!done.status.success(), "exit status {:?}", done.status);
    assert!(
        done.stderr.contains("2 threads") && done.stderr.contains("fork"),
        "the error names the threads: {:?}",
        done.stderr
    );
    assert!(
        !done.stdout.contains("listening on"),
        "it never listened: {:?}",
        done.stdout
    );
}

/// Milliseconds of the day of an env_logger line (`2025-01-02T03:04:05.678Z
/// INFO ...`), from the stamp before the level.
fn log_millis(line: &str) -> Option<u64> {
    let before = &line[..line.find(" INFO ")?];
    let stamp = before.split_whitespace().last()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let (hms, ms) = time.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.get(..3)?.parse::<u64>().ok()?)
}

#[test]
fn worker_dying_at_start_is_respawned_with_doubling_backoff_while_the_other_serves() {
    const WINDOW: Duration = Duration::from_millis(2800);
    /// The listening line may reach us this much after the master printed it.
    const PIPE_SLACK: Duration = Duration::from_millis(150);
    /// The longest a dying worker's life (fork, start, panic, reaped) may take
    /// on a loaded machine.
    const LIFE_MAX: Duration = Duration::from_millis(300);

    let server = Server::start_ws("testbed", 2, &["--panic-on-start-worker", "1"], None);
    let started = Instant::now();

    // Worker 0 serves throughout, as the same process: a 20 ms timer of its
    // paces the check, and at every tick a new client is served by it.
    let mut first = Peer::connect(server.addr);
    assert_eq!(first.worker, 0, "only worker 0 lives long enough to serve");
    let timer = first.call(json!({"op": "timer", "ms": 20, "repeat": true}))["timer"].clone();
    let mut served = 0;
    while started.elapsed() < WINDOW {
        let tick: Value = serde_json::from_str(&first.expect_push()).expect("a tick");
        assert_eq!(tick["tick"], timer, "a tick of our timer");
        let mut p = Peer::connect(server.addr);
        assert_eq!(
            (p.worker, p.pid),
            (0, first.pid),
            "worker 0 serves every client, as the same process"
        );
        p.ws.send_binary(vec![served as u8; 64]);
        assert_eq!(
            p.ws.recv(REPLY_TIMEOUT),
            Recv::Binary(vec![served as u8; 64])
        );
        served += 1;
    }
    let out = server.output();
    let elapsed = started.elapsed();
    let me = first.call(json!({"op": "whoami"}));
    assert_eq!(me["pid"].as_i64(), Some(i64::from(first.pid)));

    let starts: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("worker 1 started"))
        .collect();
    let respawns = starts.len().saturating_sub(1) as u32;
    let most = respawns_within(elapsed + PIPE_SLACK, Duration::ZERO);
    let least = respawns_within(WINDOW, LIFE_MAX);
    eprintln!(
        "worker 1 respawned {respawns} times in {elapsed:?} (schedule allows {least}..={most}); \
         {served} clients served by worker 0"
    );
    assert!(
        (least..=most).contains(&respawns),
        "worker 1 respawned {respawns} times within {elapsed:?}; a backoff of {FIRST_BACKOFF:?} \
         doubling to {MAX_BACKOFF:?} allows {least} to {most}:\n{}",
        starts.join("\n")
    );
    assert!(
        out.lines()
            .filter(|l| l.contains("worker 0 started"))
            .count()
            == 1,
        "worker 0 was never restarted"
    );

    // The gap before respawn i is at least backoff(i) (log stamps are whole
    // milliseconds) and at most backoff(i) plus one life.
    let stamps: Vec<u64> = starts
        .iter()
        .map(|l| log_millis(l).unwrap_or_else(|| panic!("no timestamp in {l:?}")))
        .collect();
    for (i, pair) in stamps.windows(2).enumerate() {
        let gap = Duration::from_millis(pair[1] - pair[0]);
        let want = backoff(i as u32 + 1);
        assert!(
            gap + Duration::from_millis(2) >= want && gap <= want + LIFE_MAX,
            "respawn {} came {gap:?} after the previous start; the backoff is {want:?}:\n{}",
            i + 1,
            starts.join("\n")
        );
    }
}

/// Connects one client per worker (found through /proc); they never read, so
/// they do not answer a close frame and keep a stopping worker alive until its
/// stop deadline.
#[track_caller]
fn one_silent_client_per_worker(server: &Server, workers: &[i32]) -> BTreeMap<i32, Ws> {
    let mut held = BTreeMap::new();
    for _ in 0..200 {
        let c = Ws::connect(server.addr, "/");
        let port = c.local_port();
        let owner = poll_until(
            REPLY_TIMEOUT,
            "the client's socket held by a worker",
            || conn_owners(server.port(), workers).get(&port).copied(),
        );
        held.entry(owner).or_insert(c);
        if held.len() == workers.len() {
            return held;
        }
    }
    panic!("200 clients did not reach all {} workers", workers.len());
}

/// What the connecting client saw during a reload.
#[derive(Default, Debug)]
struct Attempts {
    /// Connected, upgraded, and its message came back.
    served: u64,
    /// Connected and upgraded, then closed with 1001 (its worker was being
    /// replaced) before the echo.
    going_away: u64,
    /// Everything else: refused, reset, unanswered.
    lost: Vec<String>,
}

/// Connects, upgrades and echoes once per iteration, one attempt at a time,
/// until `stop`.
fn connect_in_a_loop(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Attempts>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let outcome = match Ws::connect_once(addr, "/", Duration::from_secs(5)) {
                Err(e) => Err(format!("attempt {i}: {e}")),
                Ok(mut ws) => {
                    let text = format!("attempt {i}");
                    match ws.ws.send(tungstenite::Message::text(text.clone())) {
                        Err(e) => Err(format!("attempt {i}: send: {e}")),
                        Ok(()) => match ws.recv(Duration::from_secs(5)) {
                            // Nothing else comes on an echo connection; the
                            // wait also paces the loop (~100 attempts/s).
                            Recv::Text(t) if t == text => {
                                match ws.recv(Duration::from_millis(10)) {
                                    Recv::Timeout => Ok(true),
                                    Recv::Close(Some(1001)) => Ok(false),
                                    other => Err(format!("attempt {i}: after the echo: {other:?}")),
                                }
                            }
                            Recv::Close(Some(1001)) => Ok(false),
                            other => Err(format!("attempt {i}: {other:?}")),
                        },
                    }
                }
            };
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(true) => seen.served += 1,
                Ok(false) => seen.going_away += 1,
                Err(e) => seen.lost.push(e),
            }
        }
    })
}

fn reload_replaces_workers_one_at_a_time(reuse_port: bool, by_command: bool) {
    let files = ControlFiles::without_log("stop_timeout_ms = 1000\n");
    let mut extra = vec!["-c", files.config()];
    if reuse_port {
        extra.push("--reuse-port");
    }
    let server = Server::start_ws("echo", 2, &extra, None);
    let old = server.wait_workers(2, REPLY_TIMEOUT);
    let mut held = one_silent_client_per_worker(&server, &old);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Attempts::default()));
    let looper = connect_in_a_loop(server.addr, stop.clone(), seen.clone());
    wait_until(
        REPLY_TIMEOUT,
        "the loop is served before the reload",
        || seen.lock().unwrap_or_else(|e| e.into_inner()).served >= 5,
    );

    if by_command {
        let done = files.echo("reload", &[]);
        assert!(done.status.success(), "reload command: {done:?}");
        assert!(done.stdout.contains("reload"), "{done:?}");
    } else {
        server.signal(Signal::SIGUSR1);
    }

    // Watch the master's children: when each old worker dies and each new
    // one appears.
    let t0 = Instant::now();
    let mut died: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut born: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut most_vacant = 0;
    wait_until(
        Duration::from_secs(15),
        "both old workers replaced by two new ones",
        || {
            let now = server.workers();
            let at = t0.elapsed();
            for &o in &old {
                if !now.contains(&o) {
                    died.entry(o).or_insert(at);
                }
            }
            for &w in &now {
                if !old.contains(&w) {
                    born.entry(w).or_insert(at);
                }
            }
            most_vacant = most_vacant.max(2usize.saturating_sub(now.len()));
            died.len() == 2 && now.iter().filter(|w| !old.contains(w)).count() == 2
        },
    );
    let mut deaths: Vec<(Duration, i32)> = died.iter().map(|(&p, &t)| (t, p)).collect();
    deaths.sort();
    let first_birth = born.values().min().copied().expect("a new worker");
    eprintln!(
        "reload (reuse_port = {reuse_port}): old deaths {deaths:?}, births {born:?}, \
         at most {most_vacant} slot(s) empty"
    );
    assert!(
        first_birth <= deaths[1].0,
        "one at a time: the first replacement ({first_birth:?}) comes before the second old \
         worker goes ({:?})",
        deaths[1].0
    );
    assert!(most_vacant <= 1, "never more than one slot empty");

    // Each silent client was told the server is going away, by its own worker.
    for (pid, ws) in held.iter_mut() {
        assert_eq!(
            ws.recv(REPLY_TIMEOUT),
            Recv::Close(Some(1001)),
            "the client of old worker {pid}"
        );
    }

    // The loop goes on against the new workers for a while, then stops.
    let after = seen.lock().unwrap_or_else(|e| e.into_inner()).served;
    wait_until(REPLY_TIMEOUT, "the loop is served after the reload", || {
        seen.lock().unwrap_or_else(|e| e.into_inner()).served >= after + 20
    });
    stop.store(true, Ordering::SeqCst);
    looper.join().expect("connecting thread");
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("connection attempts during the reload: {seen:?}");
    assert!(
        seen.lost.is_empty(),
        "connection attempts lost during the reload: {:?}",
        seen.lost
    );
    let new: HashSet<i32> = server.workers().into_iter().collect();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|w| !old.contains(w)), "new pids: {new:?}");
    let mut ws = Ws::connect(server.addr, "/");
    ws.send_text("after");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "after");
}

#[test]
fn sigusr1_reload_replaces_workers_one_at_a_time_losing_no_connection_shared_listener() {
    reload_replaces_workers_one_at_a_time(false, false);
}

#[test]
fn reload_command_replaces_workers_one_at_a_time_losing_no_connection_reuse_port() {
    reload_replaces_workers_one_at_a_time(true, true);
}

#[test]
fn stop_command_stops_the_server_and_removes_the_pid_file() {
    let files = ControlFiles::without_log("");
    let mut server = Server::start_ws("echo", 2, &["-c", files.config()], None);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let mut ws = Ws::connect(server.addr, "/");
    ws.send_text("before stop");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "before stop");
    assert_eq!(
        read_pid(&files.pid_file),
        Some(server.pid()),
        "the pid file names the master"
    );

    // `stop` waits for the master to be gone; the master is our child, so
    // reap it meanwhile (a zombie would look alive to `stop`).
    let stopper = {
        let config = files.config().to_string();
        std::thread::spawn(move || {
            let mut cmd = Command::new(example("echo"));
            cmd.args(["stop", "-c", &config]);
            run_to_exit(&mut cmd, Duration::from_secs(20))
        })
    };
    // Our client reads the close frame, and so answers it.
    assert_eq!(
        ws.recv(REPLY_TIMEOUT),
        Recv::Close(Some(1001)),
        "the client"
    );
    let status = server
        .wait_exit(REPLY_TIMEOUT)
        .expect("the master exits after stop");
    assert!(status.success(), "the master exits 0: {status:?}");
    let done = stopper.join().expect("stop thread");
    assert!(done.status.success(), "stop command: {done:?}");
    assert!(done.stdout.contains("stopped"), "{done:?}");
    assert!(!files.pid_file.exists(), "the pid file is removed");
    wait_until(Duration::from_secs(5), "every worker is gone", || {
        workers.iter().all(|&w| !is_alive(w))
    });

    // Nothing is running now: stop says so and fails.
    let again = files.echo("stop", &[]);
    assert!(!again.status.success(), "a second stop: {again:?}");
}

/// A request head that was still arriving when its worker was told to stop
/// for a reload gets an answer, not a dropped socket.
#[test]
fn reload_answers_a_handshake_in_progress_on_the_old_worker() {
    use std::io::{Read, Write};
    let server = Server::start_ws("echo", 1, &[], Some("[server]\nstop_timeout_ms = 3000\n"));
    let old = server.wait_workers(1, REPLY_TIMEOUT);
    // An open WebSocket on the old worker shows when it has begun to stop.
    let mut witness = Ws::connect(server.addr, "/");
    // Half a head, held by the old worker.
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .expect("write");
    let port = s.local_addr().expect("local").port();
    wait_until(REPLY_TIMEOUT, "the old worker holds the half head", || {
        conn_owners(server.port(), &old).contains_key(&port)
    });

    server.signal(Signal::SIGUSR1);
    assert_eq!(
        witness.recv(REPLY_TIMEOUT),
        Recv::Close(Some(1001)),
        "the old worker is stopping"
    );
    let _ = s.write_all(
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    );
    s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the handshake in progress was dropped: {e} (got {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 "),
        "the handshake in progress gets an HTTP answer, got {text:?}"
    );
}

/// The rows of a table printed by `status` or `connections`, each as a map
/// from header to cell. Columns are left-aligned under their headers, so a
/// cell starts where its header does.
fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("worker"));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no header in:\n{text}"));
    let mut starts = Vec::new();
    let mut prev = ' ';
    let mut prev2 = ' ';
    for (i, ch) in header.char_indices() {
        if ch != ' ' && (i == 0 || (prev == ' ' && prev2 == ' ')) {
            starts.push(i);
        }
        prev2 = prev;
        prev = ch;
    }
    let cell = |line: &str, i: usize| -> String {
        let from = starts[i].min(line.len());
        let to = starts.get(i + 1).map_or(line.len(), |&e| e.min(line.len()));
        line[from..to].trim().to_string()
    };
    lines
        .take_while(|l| l.starts_with(|c: char| c.is_ascii_digit()) || l.starts_with("total "))
        .map(|line| {
            (0..starts.len())
                .map(|i| (cell(header, i), cell(line, i)))
                .collect()
        })
        .collect()
}

#[test]
fn status_and_connections_print_every_worker_and_every_connection() {
    let files = ControlFiles::without_log("");
    let server = Server::start_ws("echo", 2, &["-c", files.config()], None);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let mut clients: Vec<Ws> = (0..3).map(|_| Ws::connect(server.addr, "/")).collect();
    for ws in &mut clients {
        ws.send_text("hello");
        assert_eq!(ws.recv_text(REPLY_TIMEOUT), "hello");
    }

    let status = files.echo("status", &[]);
    assert!(status.status.success(), "status: {status:?}");
    assert!(
        status.stdout.contains(&format!("master {}", server.pid())),
        "{}",
        status.stdout
    );
    let rows = parse_table(&status.stdout);
    let pids: HashSet<i32> = rows
        .iter()
        .filter(|r| r["worker"] != "total")
        .map(|r| r["pid"].parse().expect("a pid"))
        .collect();
    assert_eq!(pids, workers.iter().copied().collect(), "{}", status.stdout);
    let total = rows.iter().find(|r| r["worker"] == "total").expect("total");
    assert_eq!(total["conns"], "3", "{}", status.stdout);
    assert_eq!(total["msgs in"], "3", "{}", status.stdout);
    assert!(
        status.stdout.contains("registry: 3 connections"),
        "{}",
        status.stdout
    );

    let conns = files.echo("connections", &[]);
    assert!(conns.status.success(), "connections: {conns:?}");
    let rows = parse_table(&conns.stdout);
    let peers: HashSet<String> = rows.iter().map(|r| r["peer"].clone()).collect();
    let ours: HashSet<String> = clients
        .iter()
        .map(|ws| ws.ws.get_ref().local_addr().expect("addr").to_string())
        .collect();
    assert_eq!(peers, ours, "{}", conns.stdout);
    for r in &rows {
        assert_eq!(r["protocol"], "websocket", "{r:?}");
        assert_eq!(r["state"], "open", "{r:?}");
        assert_eq!(r["local"], server.addr.to_string(), "{r:?}");
        assert!(workers.contains(&r["pid"].parse().expect("pid")), "{r:?}");
    }

    // Commands at once: ordinary signals do not queue, so several requests
    // may arrive as one signal; each command still gets its answers.
    let config = files.config().to_string();
    let together: Vec<_> = (0..6)
        .map(|i| {
            let config = config.clone();
            let what = if i % 2 == 0 { "status" } else { "connections" };
            std::thread::spawn(move || {
                let mut cmd = Command::new(example("echo"));
                cmd.args([what, "-c", &config]);
                run_to_exit(&mut cmd, Duration::from_secs(20))
            })
        })
        .collect();
    for t in together {
        let done = t.join().expect("command thread");
        assert!(done.status.success(), "{done:?}");
    }
    let report_dir = PathBuf::from(format!("{}.report", files.pid_file.display()));
    let left: Vec<_> = std::fs::read_dir(&report_dir)
        .expect("report dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "files left in {}: {left:?}",
        report_dir.display()
    );

    // A stopped worker cannot answer: the command says which, fails, and
    // does not hang.
    let stopped = workers[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped), Signal::SIGSTOP).expect("stop");
    let partial = files.echo("status", &[]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped), Signal::SIGCONT).expect("cont");
    assert!(!partial.status.success(), "status: {partial:?}");
    assert!(
        partial.stderr.contains(&format!("pid {stopped}")),
        "{partial:?}"
    );
    let row = parse_table(&partial.stdout)
        .into_iter()
        .find(|r| r["pid"] == stopped.to_string())
        .expect("the stopped worker's row");
    assert!(
        row.values().any(|v| v.contains("no answer")),
        "{}",
        partial.stdout
    );

    // Once resumed, it answers again.
    let again = files.echo("status", &[]);
    assert!(again.status.success(), "status: {again:?}");
}

/// Waits until every worker in `old` is gone and `n` others run; returns them.
#[track_caller]
fn wait_replaced(server: &Server, old: &[i32], n: usize) -> Vec<i32> {
    poll_until(Duration::from_secs(15), "every worker replaced", || {
        let now = server.workers();
        (now.len() == n && now.iter().all(|w| !old.contains(w))).then_some(now)
    })
}

/// Sends `len` bytes of text and returns what came back: the echo, or the close.
fn echo_of(server: &Server, len: usize) -> Recv {
    let mut ws = Ws::connect(server.addr, "/");
    let text = "x".repeat(len);
    ws.send_text(&text);
    match ws.recv(REPLY_TIMEOUT) {
        Recv::Text(t) if t == text => Recv::Text(format!("{len} bytes")),
        other => other,
    }
}

#[test]
fn reload_reads_the_config_again_and_refuses_a_bad_one() {
    let files = ControlFiles::without_log("");
    let limit = |n: usize| format!("max_frame_bytes = {n}\nmax_message_bytes = {n}\n");
    let write_config = |pid_file: &Path, extra: &str| {
        std::fs::write(
            &files.config.path,
            format!(
                "[server]\npid_file = {:?}\nstop_timeout_ms = 1000\n{extra}",
                pid_file.display().to_string()
            ),
        )
        .expect("write the config")
    };
    write_config(&files.pid_file, &limit(1000));
    let server = Server::start_ws("echo", 2, &["-c", files.config()], None);
    let first = server.wait_workers(2, REPLY_TIMEOUT);
    assert_eq!(echo_of(&server, 2000), Recv::Close(Some(1009)));

    // A new limit takes effect with the replacement workers.
    write_config(&files.pid_file, &limit(4000));
    let done = files.echo("reload", &[]);
    assert!(done.status.success(), "reload: {done:?}");
    let second = wait_replaced(&server, &first, 2);
    assert_eq!(echo_of(&server, 2000), Recv::Text("2000 bytes".into()));

    // A bad file: the command says what is wrong and signals nothing.
    write_config(
        &files.pid_file,
        "max_frame_bytes = 4000\nmax_message_bytes = \"lots\"\n",
    );
    let refused = files.echo("reload", &[]);
    assert!(!refused.status.success(), "reload: {refused:?}");
    assert!(refused.stderr.contains("max_message_bytes"), "{refused:?}");
    // The master, asked directly, refuses it too and keeps its workers.
    server.signal(Signal::SIGUSR1);
    wait_until(REPLY_TIMEOUT, "the master logs the refusal", || {
        server.output().contains("reload refused")
    });
    assert_eq!(server.workers(), second, "the workers stay");
    assert_eq!(echo_of(&server, 2000), Recv::Text("2000 bytes".into()));

    // What takes a restart keeps its running value, with a warning; the
    // rest of the file still applies.
    let elsewhere = temp_path("pid");
    write_config(&elsewhere, &limit(3000));
    server.signal(Signal::SIGUSR1);
    wait_replaced(&server, &second, 2);
    assert!(
        server.output().contains("pid_file changed"),
        "{}",
        server.output()
    );
    assert_eq!(read_pid(&files.pid_file), Some(server.pid()));
    assert!(!elsewhere.exists(), "no pid file at the new path");
    assert_eq!(echo_of(&server, 2000), Recv::Text("2000 bytes".into()));
    assert_eq!(echo_of(&server, 3500), Recv::Close(Some(1009)));
}

#[test]
fn reload_stops_when_a_replacement_dies_at_start() {
    let files = ControlFiles::without_log("stop_timeout_ms = 1000\n");
    let broken = temp_path("broken");
    let broken_arg = broken.to_str().expect("utf-8 temp path").to_string();
    let server = Server::start_ws(
        "testbed",
        2,
        &["-c", files.config(), "--panic-on-start-if", &broken_arg],
        None,
    );
    let old = server.wait_workers(2, REPLY_TIMEOUT);
    // Forked is not started: both must be past their handler factory (which
    // checks the file) before the release breaks. A worker answers `status`
    // from its loop.
    wait_until(REPLY_TIMEOUT, "both workers answer status", || {
        files.echo("status", &[]).status.success()
    });

    // A "release" whose workers die at start: the first replacement dies, and
    // the reload stops there instead of taking down the other worker too.
    std::fs::write(&broken, "").expect("break the release");
    let done = files.echo("reload", &[]);
    assert!(done.status.success(), "reload: {done:?}");
    wait_until(
        Duration::from_secs(15),
        "the master stops the reload",
        || server.output().contains("reload stopped"),
    );
    let survivors: Vec<i32> = old.iter().copied().filter(|&p| is_alive(p)).collect();
    assert_eq!(survivors.len(), 1, "one old worker still runs: {old:?}");
    let mut ws = Ws::connect(server.addr, "/");
    ws.send_text(r#"{"op":"whoami","id":1}"#);
    assert!(ws.recv_text(REPLY_TIMEOUT).contains("\"conn\""));

    // Fixed: the empty slot comes back by itself, next to the survivor.
    std::fs::remove_file(&broken).expect("fix the release");
    let now = poll_until(Duration::from_secs(15), "the slot respawned", || {
        let w = server.workers();
        (w.len() == 2).then_some(w)
    });
    assert!(now.contains(&survivors[0]), "{now:?}");
}
