//! The executor (`task_worker`) against a scheduler played by the test, so
//! that its connection can be cut at a chosen moment: it reconnects by
//! itself, says `hello` again, and a job whose lease ended with the lost
//! connection is not reported late on the new one (the scheduler runs it
//! again; delivery is at least once), which its log says.

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A `task_worker` process and its log lines; killed on drop.
struct Executor {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Executor {
    fn start(scheduler: &str, capacity: u32) -> Executor {
        let mut child = Command::new(common::example("task_worker"))
            .args([
                "--scheduler",
                scheduler,
                "--queues",
                "q",
                "--name",
                "fake-test",
            ])
            .args(["--capacity", &capacity.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start task_worker");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Executor { child, log }
    }

    /// Waits for a log line containing `text`.
    #[track_caller]
    fn wait_log(&self, text: &str) {
        common::wait_until(WAIT, &format!("task_worker logs {text:?}"), || {
            self.log.lock().unwrap().iter().any(|l| l.contains(text))
        });
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection from the executor, seen from the scheduler's side.
struct Session {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Session {
    /// Accepts the executor's next connection and answers its `hello`.
    #[track_caller]
    fn accept(listener: &TcpListener) -> Session {
        listener.set_nonblocking(true).expect("nonblocking");
        let stream =
            common::poll_until(WAIT, "the executor connects", || match listener.accept() {
                Ok((s, _)) => Some(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => panic!("accept: {e}"),
            });
        stream.set_nonblocking(false).expect("blocking");
        let mut s = Session {
            stream,
            buf: Vec::new(),
        };
        let hello = s.recv();
        assert_eq!(
            (hello["type"].as_str(), hello["role"].as_str()),
            (Some("hello"), Some("executor")),
            "{hello}"
        );
        assert_eq!(hello["capacity"], 1);
        s.send(&json!({"type": "welcome", "role": "executor", "node": "fake"}));
        s
    }

    fn send(&mut self, v: &Value) {
        let payload = v.to_string();
        let mut f = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload.as_bytes());
        self.stream.write_all(&f).expect("write");
    }

    /// The next frame the executor sends.
    #[track_caller]
    fn recv(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= n {
                    let frame: Vec<u8> = self.buf.drain(..n).skip(4).collect();
                    return serde_json::from_slice(&frame).expect("a JSON frame");
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no frame from the executor within {WAIT:?}"
            );
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the executor closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

fn push(job: &str, payload: Value, attempt: u64) -> Value {
    json!({"type": "job", "job": job, "queue": "q", "payload": payload,
        "attempt": attempt, "lease_ms": 600_000})
}

#[test]
fn a_lost_connection_is_remade_and_its_jobs_result_is_not_sent_late() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    let exec = Executor::start(&addr, 1);
    let mut first = Session::accept(&listener);
    first.send(&push("1", json!({"kind": "sleep", "ms": 400}), 1));
    exec.wait_log("job 1: started");
    // The scheduler goes away while job 1 runs.
    drop(first);
    exec.wait_log("connection lost with 1 jobs running");
    let mut second = Session::accept(&listener);
    exec.wait_log("job 1: lease lost with the connection");
    // Frames on one connection keep their order: had job 1's result been
    // sent on this session, it would come before job 2's.
    second.send(&push("2", json!({"kind": "echo", "value": "two"}), 1));
    let done = second.recv();
    assert_eq!(
        (
            done["type"].clone(),
            done["job"].clone(),
            done["result"].clone()
        ),
        (json!("done"), json!("2"), json!("two")),
        "job 1's late result must not be sent: {done}"
    );
}

#[test]
fn a_job_pushed_again_after_a_reconnect_waits_for_the_slot_of_the_one_still_running() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    let exec = Executor::start(&addr, 1);
    let mut first = Session::accept(&listener);
    first.send(&push("7", json!({"kind": "sleep", "ms": 400}), 1));
    exec.wait_log("job 7: started");
    drop(first);
    let mut second = Session::accept(&listener);
    // The scheduler hands the job out again at once, as the protocol says
    // for a lost lease; capacity 1 is still taken by the first run.
    second.send(&push("7", json!({"kind": "sleep", "ms": 1}), 2));
    let done = second.recv();
    assert_eq!(
        (done["type"].clone(), done["job"].clone()),
        (json!("done"), json!("7"))
    );
    exec.wait_log("job 7: lease lost with the connection");
    let log = exec.log.lock().unwrap().clone();
    let lost = log
        .iter()
        .position(|l| l.contains("job 7: lease lost with the connection"))
        .unwrap();
    let second_start = log
        .iter()
        .position(|l| l.contains("job 7: started (kind sleep, attempt 2)"))
        .expect("attempt 2 started");
    assert!(
        lost < second_start,
        "attempt 2 must wait until the first run gave its slot back:\n{}",
        log.join("\n")
    );
}
