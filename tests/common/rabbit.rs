//! RabbitMQ for the bridge tests (tests/amqp_bridge.rs).
//!
//! - [`machine_url`]: the machine's broker on 127.0.0.1:5672 (guest/guest),
//!   which scripts/setup-rabbitmq.sh makes answer; tests using it name
//!   their queues uniquely ([`unique`]) and delete them.
//! - [`RabbitServer`]: a private broker for tests that kill or restart
//!   one: its own node name, free AMQP, distribution and epmd ports, its
//!   own mnesia and log directories and Erlang cookie (`HOME`), killed on
//!   drop. It never touches the machine's broker.
//! - [`Client`]: a small lapin client on its own tokio runtime: declare
//!   and delete queues, publish with confirms, consume.

use super::{pump, Log};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a broker may take to listen after a (re)start (Erlang boots
/// slowly on a busy 2-core machine).
pub const RABBIT_START: Duration = Duration::from_secs(120);

/// The machine's broker, which must answer (scripts/setup-rabbitmq.sh).
#[track_caller]
pub fn machine_url() -> String {
    let addr = (Ipv4Addr::LOCALHOST, 5672).into();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "no RabbitMQ on 127.0.0.1:5672: run scripts/setup-rabbitmq.sh"
    );
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

/// A name no other test (or test run) uses: `prefix.PID.N.NANOS`.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}.{}.{}.{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Three ports nothing listens on now, below the ephemeral range (so that
/// no client socket takes one while the broker is down).
fn free_ports() -> [u16; 3] {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut out = [0u16; 3];
    let mut n = 0;
    while n < 3 {
        let seed = (std::process::id() as u64) * 7919
            + SEQ.fetch_add(1, Ordering::Relaxed) * 104_729
            + u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()),
            );
        let port = 12_000 + (seed % 18_000) as u16;
        if !out.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            out[n] = port;
            n += 1;
        }
    }
    out
}

/// A private RabbitMQ node; see the module docs.
pub struct RabbitServer {
    broker: Option<Child>,
    epmd: Option<Child>,
    /// AMQP, Erlang distribution and epmd ports, kept across restarts.
    ports: [u16; 3],
    dir: PathBuf,
    log: Log,
}

impl RabbitServer {
    /// Starts a node and waits until it accepts AMQP connections.
    #[track_caller]
    pub fn start() -> RabbitServer {
        let dir = std::env::temp_dir().join(unique("foreman-rabbit"));
        std::fs::create_dir_all(&dir).expect("create the broker's directory");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        let mut r = RabbitServer {
            broker: None,
            epmd: None,
            ports: free_ports(),
            dir,
            log: Log::default(),
        };
        r.spawn();
        r
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.ports[0])
    }

    /// What the broker printed.
    pub fn output(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn env(&self, cmd: &mut Command) {
        let [amqp, dist, epmd] = self.ports;
        let d = &self.dir;
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", d)
            .env("LANG", "C.UTF-8")
            .env("RABBITMQ_CONF_ENV_FILE", d.join("no-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env(
                "RABBITMQ_NODENAME",
                format!("foreman-test-{amqp}@localhost"),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_PORT", epmd.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins-expand"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group, killed whole on drop; and dead with the
        // test thread that started it even if no drop runs.
        // SAFETY: setpgid and prctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Starts epmd (ours, on our port) and the node; waits until it listens.
    #[track_caller]
    fn spawn(&mut self) {
        if self.epmd.is_none() {
            let mut cmd = Command::new("epmd");
            self.env(&mut cmd);
            cmd.args(["-port", &self.ports[2].to_string(), "-address", "127.0.0.1"]);
            let mut epmd = cmd.spawn().unwrap_or_else(|e| panic!("spawn epmd: {e}"));
            pump_output(&mut epmd, "[epmd] ", &self.log);
            self.epmd = Some(epmd);
        }
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        self.env(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn rabbitmq-server (scripts/setup-rabbitmq.sh): {e}"));
        pump_output(&mut child, "[rabbit] ", &self.log);
        self.broker = Some(child);
        let addr = (Ipv4Addr::LOCALHOST, self.ports[0]).into();
        let deadline = Instant::now() + RABBIT_START;
        loop {
            if let Some(status) = self
                .broker
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("rabbitmq-server exited ({status}):\n{}", self.output());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not listen on {addr} within {RABBIT_START:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the node cleanly (SIGTERM: RabbitMQ shuts down and writes
    /// out its state) and waits for it to exit.
    #[track_caller]
    pub fn stop(&mut self) {
        let Some(mut c) = self.broker.take() else {
            return;
        };
        let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + RABBIT_START;
        while c.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not stop within {RABBIT_START:?} of SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the node (its whole process group), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.broker.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Starts a killed node again on the same ports and data.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.broker.is_none(), "the node is running");
        self.spawn();
    }

    /// Kills the node and starts it again on the same ports and data.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut e) = self.epmd.take() {
            let _ = killpg(Pid::from_raw(e.id() as i32), Signal::SIGKILL);
            let _ = e.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A test's own AMQP client, on its own tokio runtime.
pub struct Client {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    channel: lapin::Channel,
}

/// A consumed message: body, correlation id.
pub type Got = (String, Option<String>);

impl Client {
    /// Connects, with a channel in confirm mode; retries until `timeout`.
    #[track_caller]
    pub fn connect(url: &str, timeout: Duration) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let deadline = Instant::now() + timeout;
        let (conn, channel) = loop {
            let tried = rt.block_on(async {
                let props = ConnectionProperties::default()
                    .with_executor(tokio_executor_trait::Tokio::current())
                    .with_reactor(tokio_reactor_trait::Tokio::current());
                let conn = Connection::connect(url, props).await?;
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                Ok::<_, lapin::Error>((conn, ch))
            });
            match tried {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot connect to {url}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        Client { rt, conn, channel }
    }

    /// Declares a durable (classic) queue.
    pub fn declare(&self, queue: &str) {
        self.declare_with(queue, FieldTable::default());
    }

    /// Declares a quorum queue.
    pub fn declare_quorum(&self, queue: &str) {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        self.declare_with(queue, args);
    }

    fn declare_with(&self, queue: &str, args: FieldTable) {
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.rt
            .block_on(self.channel.queue_declare(queue, opts, args))
            .unwrap_or_else(|e| panic!("declare {queue}: {e}"));
    }

    /// Declares a durable queue bound to the durable topic exchange
    /// `exchange` (declared too) with `pattern`.
    pub fn bind(&self, queue: &str, exchange: &str, pattern: &str) {
        self.declare(queue);
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.rt
            .block_on(async {
                self.channel
                    .exchange_declare(
                        exchange,
                        lapin::ExchangeKind::Topic,
                        durable,
                        FieldTable::default(),
                    )
                    .await?;
                self.channel
                    .queue_bind(
                        queue,
                        exchange,
                        pattern,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            })
            .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
    }

    /// Deletes a queue (cleaning up).
    pub fn delete(&self, queue: &str) {
        let _ = self.rt.block_on(
            self.channel
                .queue_delete(queue, QueueDeleteOptions::default()),
        );
    }

    /// Deletes an exchange (cleaning up).
    pub fn delete_exchange(&self, exchange: &str) {
        let _ = self.rt.block_on(
            self.channel
                .exchange_delete(exchange, ExchangeDeleteOptions::default()),
        );
    }

    /// Messages ready in a queue (declared passively).
    pub fn ready(&self, queue: &str) -> u32 {
        let opts = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.rt
            .block_on(
                self.channel
                    .queue_declare(queue, opts, FieldTable::default()),
            )
            .map(|q| q.message_count())
            .unwrap_or_else(|e| panic!("declare {queue} passively: {e}"))
    }

    /// Publishes persistent messages to `queue` (default exchange),
    /// `window` at a time, each confirmed before the next window: how many
    /// the broker confirmed, stopping at the first failure.
    pub fn publish_confirmed(
        &self,
        queue: &str,
        bodies: impl IntoIterator<Item = String>,
        props: BasicProperties,
        window: usize,
    ) -> Result<usize, String> {
        let bodies: Vec<String> = bodies.into_iter().collect();
        let mut confirmed = 0;
        for chunk in bodies.chunks(window.max(1)) {
            let done: Result<usize, lapin::Error> = self.rt.block_on(async {
                let mut confirms = Vec::with_capacity(chunk.len());
                for b in chunk {
                    let c = self
                        .channel
                        .basic_publish(
                            "",
                            queue,
                            BasicPublishOptions::default(),
                            b.as_bytes(),
                            props.clone().with_delivery_mode(2),
                        )
                        .await?;
                    confirms.push(c);
                }
                let mut n = 0;
                for c in confirms {
                    if c.await?.is_ack() {
                        n += 1;
                    }
                }
                Ok(n)
            });
            match done {
                Ok(n) if n == chunk.len() => confirmed += n,
                Ok(n) => return Err(format!("{} nacked after {confirmed}", chunk.len() - n)),
                Err(e) => return Err(format!("after {confirmed} confirmed: {e}")),
            }
        }
        Ok(confirmed)
    }

    /// Consumes from `queue` until `n` messages came or `timeout` passed,
    /// acking each: their bodies and correlation ids.
    pub fn consume(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Got> {
        self.consume_then_quiet(queue, n, timeout, Duration::ZERO)
    }

    /// [`Client::consume`], then goes on taking what comes until `quiet`
    /// passes without a message: a test that wants `n` and no more sees
    /// a repeat after the last. The consumer is cancelled at the end, so
    /// that it takes nothing more from the queue.
    pub fn consume_then_quiet(
        &self,
        queue: &str,
        n: usize,
        timeout: Duration,
        quiet: Duration,
    ) -> Vec<Got> {
        let mut consumer = self.subscribe(queue);
        let got = self.take(&mut consumer, n, timeout, quiet);
        let _ = self.rt.block_on(self.channel.basic_cancel(
            consumer.tag().as_str(),
            lapin::options::BasicCancelOptions::default(),
        ));
        got
    }

    /// A consumer of `queue` for several [`Client::take`]s (a reply queue
    /// read answer by answer: consumers made one per read would share the
    /// queue's messages among them).
    pub fn subscribe(&self, queue: &str) -> lapin::Consumer {
        self.rt
            .block_on(self.channel.basic_consume(
                queue,
                &unique("test-consumer"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .expect("basic.consume")
    }

    /// Takes from `consumer` until `n` messages came or `timeout` passed,
    /// then what comes until `quiet` passes without one, acking each: their
    /// bodies and correlation ids.
    pub fn take(
        &self,
        consumer: &mut lapin::Consumer,
        n: usize,
        timeout: Duration,
        quiet: Duration,
    ) -> Vec<Got> {
        use futures_util::StreamExt;
        self.rt.block_on(async {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let until = if got.len() < n {
                    deadline
                } else if quiet.is_zero() {
                    break;
                } else {
                    tokio::time::Instant::now() + quiet
                };
                match tokio::time::timeout_at(until, consumer.next()).await {
                    Ok(Some(Ok(d))) => {
                        got.push((
                            String::from_utf8_lossy(&d.data).into_owned(),
                            d.properties
                                .correlation_id()
                                .as_ref()
                                .map(|c| c.to_string()),
                        ));
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                    }
                    _ => break,
                }
            }
            got
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.conn.close(200, "test done"));
    }
}

/// Copies a child's stdout and stderr, each line prefixed, into `log`.
fn pump_output(child: &mut Child, prefix: &'static str, log: &Log) {
    pump(
        child.stdout.take().expect("stdout"),
        prefix,
        log.clone(),
        None,
    );
    pump(
        child.stderr.take().expect("stderr"),
        prefix,
        log.clone(),
        None,
    );
}
