//! A submitter for the task scheduler (`examples/tasks`,
//! `shared/tasks-protocol.md`): a small blocking client that hands in one
//! job, or asks after one, and prints the scheduler's answer as one line of
//! JSON on stdout.
//!
//! ```text
//! task_submit [--scheduler ADDR] [--queue Q] [--priority P] [--delay-ms N]
//!             [--max-attempts N] [--timeout-ms N] [--unique K] [--token JWT]
//!             [--name NAME] [--wait] KIND [JSON-ARGS]
//! task_submit [--scheduler ADDR] --status JOB
//! task_submit [--scheduler ADDR] --stats QUEUE
//! task_submit [--scheduler ADDR] --cancel JOB
//!
//! task_submit sleep '{"ms": 500}'               # {"type":"accepted","job":"1",...}
//! task_submit --wait --queue mail echo '{"value": [1, 2]}'
//! ```
//!
//! The payload is `{"kind": KIND, ...JSON-ARGS}` (JSON-ARGS an object).
//! The numbers go to the scheduler as given: it checks their ranges and
//! answers `bad_request` for a bad one.
//!
//! With `--wait` it also `watch`es the job and prints the `finished` push
//! when it comes: the exit code is 0 if the job succeeded, 1 if it ended
//! dead or cancelled. Should the connection drop while waiting, it connects
//! again and watches once more. Any error (an `error` frame, printed on
//! stderr, or a connection that cannot be made) exits 2. An `unavailable`
//! answer (a scheduler process restarting; nothing was done) is tried again
//! a few times first.

use clap::Parser;
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long a request may wait for its answer (not the `--wait` for the
/// job's end, which waits as long as the job takes).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `unavailable` answers, and a lost connection while waiting,
/// are tried again for.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// The first pause before trying again; it doubles up to a second.
const RETRY_FIRST: Duration = Duration::from_millis(50);

/// The largest frame accepted from the scheduler.
const MAX_FRAME_BYTES: usize = 64 << 20;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "task_submit",
    version,
    about = "Hands a job to the task scheduler, or asks after one"
)]
struct Cli {
    /// The scheduler: host:port or frame://host:port
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8100")]
    scheduler: String,
    /// The queue
    #[arg(long, value_name = "Q", default_value = "default")]
    queue: String,
    /// Priority, 0-9 (9 first; the scheduler's default 5)
    #[arg(long, value_name = "P")]
    priority: Option<u64>,
    /// Run it no sooner than this many ms from now
    #[arg(long, value_name = "N")]
    delay_ms: Option<u64>,
    /// Attempts before it is dead (the scheduler's default 3)
    #[arg(long, value_name = "N")]
    max_attempts: Option<u64>,
    /// The lease: how long one attempt may run without an extend
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// A key that makes submitting idempotent while the job is kept
    #[arg(long, value_name = "K")]
    unique: Option<String>,
    /// The hello token, when the scheduler's auth is on (its sub is --name)
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// The name in hello
    #[arg(long, value_name = "NAME", default_value = "task_submit")]
    name: String,
    /// Wait for the job to end, print the finished push, exit 0 if it succeeded
    #[arg(long, conflicts_with_all = ["status", "stats", "cancel"])]
    wait: bool,
    /// Print the state of job JOB instead of submitting
    #[arg(long, value_name = "JOB", conflicts_with_all = ["stats", "cancel"])]
    status: Option<String>,
    /// Print the counts by state of QUEUE instead of submitting
    #[arg(long, value_name = "QUEUE", conflicts_with = "cancel")]
    stats: Option<String>,
    /// Cancel job JOB instead of submitting
    #[arg(long, value_name = "JOB")]
    cancel: Option<String>,
    /// The job kind (noop, sleep, sha256, fail, echo, exec, or your executor's)
    #[arg(value_name = "KIND", required_unless_present_any = ["status", "stats", "cancel"],
          conflicts_with_all = ["status", "stats", "cancel"])]
    kind: Option<String>,
    /// A JSON object merged into the payload: '{"ms": 500}'
    #[arg(value_name = "JSON-ARGS", value_parser = json_object)]
    args: Option<Map<String, Value>>,
}

fn json_object(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) if m.contains_key("kind") => {
            Err("the kind is the KIND argument, not a key of JSON-ARGS".into())
        }
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("a JSON object, as '{\"ms\": 500}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Why the program stops early.
enum Failure {
    /// Could not talk to the scheduler.
    Io(String),
    /// The scheduler answered `error`; the frame.
    Refused(Value),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Io(e.to_string())
    }
}

/// A connection that said hello.
struct Client {
    stream: TcpStream,
}

impl Client {
    /// Connects and says hello as a submitter.
    fn open(cli: &Cli) -> Result<Client, Failure> {
        let addr = cli
            .scheduler
            .strip_prefix("frame://")
            .unwrap_or(&cli.scheduler);
        let stream =
            TcpStream::connect(addr).map_err(|e| Failure::Io(format!("connect to {addr}: {e}")))?;
        stream.set_nodelay(true)?;
        let mut client = Client { stream };
        let mut hello = json!({"type": "hello", "role": "submitter", "name": cli.name});
        if let Some(t) = &cli.token {
            hello["token"] = json!(t);
        }
        client.ask(&hello, "welcome")?;
        Ok(client)
    }

    fn send(&mut self, frame: &Value) -> Result<(), Failure> {
        let body = frame.to_string();
        let mut bytes = Vec::with_capacity(4 + body.len());
        bytes.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(body.as_bytes());
        self.stream.write_all(&bytes)?;
        Ok(())
    }

    /// The next frame, waiting at most `timeout` (`None`: for ever).
    fn read(&mut self, timeout: Option<Duration>) -> Result<Value, Failure> {
        self.stream.set_read_timeout(timeout)?;
        let mut head = [0u8; 4];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    Failure::Io(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))
                }
                std::io::ErrorKind::UnexpectedEof => {
                    Failure::Io("the scheduler closed the connection".into())
                }
                _ => e.into(),
            })?;
        let len = u32::from_be_bytes(head) as usize;
        if !(4..=MAX_FRAME_BYTES).contains(&len) {
            return Err(Failure::Io(format!("a frame of length {len}")));
        }
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body)?;
        serde_json::from_slice(&body)
            .map_err(|e| Failure::Io(format!("a frame that is not JSON: {e}")))
    }

    /// Sends `request` and reads up to its answer, of type `want` or
    /// `error`; a push that comes first (a `finished`) is skipped.
    fn ask(&mut self, request: &Value, want: &str) -> Result<Value, Failure> {
        self.send(request)?;
        loop {
            let frame = self.read(Some(ANSWER_TIMEOUT))?;
            match frame["type"].as_str() {
                Some(t) if t == want => return Ok(frame),
                Some("error") => return Err(Failure::Refused(frame)),
                _ => {}
            }
        }
    }
}

/// Runs `f` again while it fails with `unavailable` or (when `on_io`) an
/// I/O failure, pausing a little longer each time, for [`RETRY_FOR`].
fn retrying<T>(on_io: bool, mut f: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
    let give_up = Instant::now() + RETRY_FOR;
    let mut pause = RETRY_FIRST;
    loop {
        let again = match f() {
            Err(Failure::Refused(e)) if e["code"] == "unavailable" => Failure::Refused(e),
            Err(Failure::Io(e)) if on_io => Failure::Io(e),
            done => return done,
        };
        if Instant::now() + pause > give_up {
            return Err(again);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn submit_frame(cli: &Cli, kind: &str) -> Value {
    let mut payload = Map::new();
    payload.insert("kind".into(), json!(kind));
    payload.extend(cli.args.clone().unwrap_or_default());
    let mut submit = json!({"type": "submit", "queue": cli.queue, "payload": payload});
    let optional = [
        ("priority", cli.priority.map(Value::from)),
        ("delay_ms", cli.delay_ms.map(Value::from)),
        ("max_attempts", cli.max_attempts.map(Value::from)),
        ("timeout_ms", cli.timeout_ms.map(Value::from)),
        ("unique", cli.unique.clone().map(Value::from)),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            submit[key] = v;
        }
    }
    submit
}

/// Watches `job` on `client` until its `finished` push, connecting again
/// (and watching again) if the connection is lost; the push.
fn wait_for(cli: &Cli, mut client: Client, job: &str) -> Result<Value, Failure> {
    let watch = json!({"type": "watch", "job": job});
    client.ask(&watch, "watching")?;
    loop {
        match client.read(None) {
            Ok(f) if f["type"] == "finished" && f["job"] == job => return Ok(f),
            Ok(_) => {}
            Err(Failure::Io(e)) => {
                eprintln!("task_submit: connection lost while waiting ({e}); watching again");
                client = retrying(true, || {
                    let mut c = Client::open(cli)?;
                    c.ask(&watch, "watching")?;
                    Ok(c)
                })?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, Failure> {
    let (request, want) = if let Some(job) = &cli.status {
        (json!({"type": "status", "job": job}), "job")
    } else if let Some(queue) = &cli.stats {
        (json!({"type": "stats", "queue": queue}), "stats")
    } else if let Some(job) = &cli.cancel {
        (json!({"type": "cancel", "job": job}), "cancelled")
    } else {
        let kind = cli.kind.as_deref().unwrap_or_default();
        (submit_frame(cli, kind), "accepted")
    };
    let (client, answer) = retrying(false, || {
        let mut c = Client::open(cli)?;
        let answer = c.ask(&request, want)?;
        Ok((c, answer))
    })?;
    println!("{answer}");
    if !cli.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let job = answer["job"].as_str().unwrap_or_default().to_string();
    let finished = wait_for(cli, client, &job)?;
    println!("{finished}");
    Ok(if finished["state"] == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(Failure::Io(e)) => {
            eprintln!("task_submit: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(frame)) => {
            eprintln!(
                "task_submit: {}: {}",
                frame["code"].as_str().unwrap_or("error"),
                frame["message"].as_str().unwrap_or("")
            );
            eprintln!("{frame}");
            ExitCode::from(2)
        }
    }
}
