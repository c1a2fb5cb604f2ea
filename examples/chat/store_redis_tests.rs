//! Unit tests of the Redis store, each against a `redis-server` of its own
//! (started on a free port with the durable settings, killed on drop): ids,
//! paging, presence, reaping, and failures while Redis is gone or stopped.

use super::*;
use crate::store::tests::{
    conn, first, gone, history, ids, join, leave, message_ids, room, say,
    scenario_direct_conversations, scenario_ids_and_paging, scenario_joined_carries_last_messages,
    scenario_presence_per_user,
};
use crate::store::Writer;
use foreman::ClusterSection;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How long any wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// A `redis-server` of one test, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one on a free port, in a fresh directory.
    fn start() -> RedisServer {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chat-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer::start_at(dir, port)
    }

    /// Starts one on `port` with its files in `dir` (a restart).
    fn start_at(dir: PathBuf, port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let server = RedisServer { child, port, dir };
        let deadline = Instant::now() + WAIT;
        // Answering PING: accepting connections and done loading its files.
        let ping = |c: redis::Client| redis::cmd("PING").query::<String>(&mut c.get_connection()?);
        while ping(server.client()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap()
    }

    /// A command's answer.
    fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.client().get_connection().unwrap())
            .unwrap()
    }

    /// Kills it (SIGKILL) and waits for it: the port is free again.
    fn kill(mut self) -> (PathBuf, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (std::mem::take(&mut self.dir), self.port)
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// The config of node `node` of a cluster on this server.
    fn cluster(&self, node: &str, ttl_ms: u64) -> ClusterConfig {
        let section = ClusterSection {
            redis_url: Some(format!("redis://127.0.0.1:{}", self.port)),
            node: Some(node.into()),
            presence_ttl_ms: Some(ttl_ms),
            prefix: Some("t".into()),
        };
        ClusterConfig::from_section(&section).unwrap().unwrap()
    }

    /// The store of worker `slot` on node `node`.
    fn store(&self, node: &str, slot: usize) -> RedisStore {
        RedisStore::new(&self.cluster(node, 15_000), slot).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn ids_grow_and_history_pages_backwards() {
    let redis = RedisServer::start();
    scenario_ids_and_paging(&mut redis.store("a", 0), &mut redis.store("b", 1));
}

#[test]
fn direct_conversations_are_shared_by_both_sides() {
    scenario_direct_conversations(&mut RedisServer::start().store("a", 0));
}

#[test]
fn joined_carries_the_rooms_last_messages() {
    scenario_joined_carries_last_messages(&mut RedisServer::start().store("a", 0));
}

#[test]
fn presence_is_decided_per_user_across_workers_and_nodes() {
    let redis = RedisServer::start();
    let (mut a0, mut b1) = (redis.store("a", 0), redis.store("b", 1));
    // Two connections of al on two nodes, one of bo.
    scenario_presence_per_user(&mut a0, &mut b1, "7.1.1.2");
    // Nothing of them is left behind.
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("t:chat:*"));
    let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["t:chat:alive:a:0", "t:chat:alive:b:1", "t:chat:units"]
    );
}

#[test]
fn a_restarted_worker_reaps_its_slots_old_rows() {
    let redis = RedisServer::start();
    let (mut a0, mut a1, mut a3) = (
        redis.store("a", 0),
        redis.store("a", 1),
        redis.store("a", 3),
    );
    let mut b1 = redis.store("b", 1);
    a1.run(&[join("1.1.1", "al", "r"), join("1.2.3", "bo", "r")]);
    a0.run(&[join("0.1.2", "al", "r")]);
    a3.run(&[join("3.2.3", "cy", "r")]);
    b1.run(&[join("9.1.4.4", "dee", "r")]);
    // Slot 1 of node a restarts, with 2 slots now: bo and cy are gone, al
    // stays through slot 0, dee on node b is not touched.
    let mut restarted = redis.store("a", 1);
    let done = restarted.run(&[Job::Reap {
        worker: 1,
        count: 2,
    }]);
    assert_eq!(gone(&done), ["bo@r", "cy@r"]);
    assert_eq!(first(&restarted.run(&[join("1.5.9", "bo", "r")])), [true]);
    assert_eq!(first(&a0.run(&[join("0.9.9", "dee", "r")])), [false]);
}

#[test]
fn a_dead_units_rows_are_reaped_once_by_some_other_worker() {
    let redis = RedisServer::start();
    // Node b's worker has a short presence TTL and then stops refreshing it.
    let ttl = Duration::from_millis(1000);
    let mut dead = RedisStore::new(&redis.cluster("b", 1000), 0).unwrap();
    let start = Instant::now();
    dead.run(&[join("5.0.1.1", "bo", "r"), join("5.0.2.2", "al", "r")]);
    let mut a0 = redis.store("a", 0);
    let mut a1 = redis.store("a", 1);
    a0.run(&[join("0.1.1", "al", "r")]);
    // While b:0 is alive, nothing is reaped.
    let early = a0.housekeep();
    if start.elapsed() < ttl {
        assert!(early.is_empty(), "{early:?}");
    }
    let mut found = early;
    while found.is_empty() {
        assert!(start.elapsed() < WAIT, "b:0 was never reaped");
        std::thread::sleep(Duration::from_millis(20));
        found = a0.housekeep();
    }
    assert!(start.elapsed() >= ttl, "not before its TTL");
    // bo's only connection was there; al has one on a:0.
    assert_eq!(gone(&found), ["bo@r"]);
    assert!(a1.housekeep().is_empty(), "announced once");
    let units: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg("t:chat:units"));
    assert!(!units.contains(&"b:0".to_string()), "{units:?}");
    // The node comes back: its next batch registers it again, and says it
    // had expired, so its worker puts its connections back.
    let done = dead.run(&[join("5.0.3.3", "bo", "r")]);
    assert!(
        matches!(
            done.as_slice(),
            [Done::Joined { first: true, .. }, Done::Revived]
        ),
        "{done:?}"
    );
    let rejoin = |c: &str, user: &str| Job::Rejoin {
        conn: conn(c),
        user: user.into(),
        room: "r".into(),
    };
    let done = dead.run(&[rejoin("5.0.1.1", "bo"), rejoin("5.0.2.2", "al")]);
    assert_eq!(
        done,
        [
            Done::Rejoined {
                user: "bo".into(),
                room: "r".into(),
                first: false
            },
            Done::Rejoined {
                user: "al".into(),
                room: "r".into(),
                first: false
            },
        ],
        "bo is back through 5.0.3.3 already, al was never gone"
    );
    // Once: the unit is alive again.
    assert!(a0.housekeep().is_empty());
    assert_eq!(dead.housekeep(), []);
    assert_eq!(
        first(&dead.run(&[leave("5.0.3.3", "bo", "r"), leave("5.0.1.1", "bo", "r")])),
        [false, true],
        "5.0.1.1 was put back"
    );
    let units: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg("t:chat:units"));
    assert!(units.contains(&"b:0".to_string()), "{units:?}");
    let alive: bool = redis.query(redis::cmd("EXISTS").arg("t:chat:alive:b:0"));
    assert!(alive);
}

#[test]
fn housekeeping_is_due_every_third_of_the_ttl() {
    let redis = RedisServer::start();
    let mut s = RedisStore::new(&redis.cluster("a", 3000), 0).unwrap();
    assert!(
        s.housekeeping_due().unwrap() <= Instant::now(),
        "due at once"
    );
    let before = Instant::now();
    s.housekeep();
    let due = s.housekeeping_due().unwrap();
    assert!(
        due >= before + Duration::from_millis(1000)
            && due <= Instant::now() + Duration::from_millis(1000)
    );
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg("t:chat:alive:a:0"));
    assert!(ttl > 2000 && ttl <= 3000, "{ttl}");
}

#[test]
fn a_killed_redis_fails_requests_and_a_restarted_one_serves_the_same_store() {
    let redis = RedisServer::start();
    let mut s = redis.store("a", 0);
    assert_eq!(ids(&s.run(&[say("0.1.1", "al", room("r"), "before")])), [1]);
    let (dir, port) = redis.kill();

    let hello = say("0.1.1", "al", room("r"), "hello");
    let closed = Job::Closed {
        conn: conn("0.1.1"),
        user: "al".into(),
    };
    let done = s.run(&[hello.clone(), closed.clone()]);
    match done.as_slice() {
        [Done::Failed { job, .. }, Done::Busy(kept)] => {
            assert_eq!(job, &hello);
            assert_eq!(kept, &closed, "a close is kept, to be tried again");
        }
        other => panic!("{other:?}"),
    }
    // Same port, same files: the append-only file kept the message.
    let redis = RedisServer::start_at(dir, port);
    assert_eq!(ids(&s.run(&[say("0.1.1", "al", room("r"), "after")])), [2]);
    assert_eq!(
        message_ids(&history(&mut s, "al", room("r"), None, 50)),
        [1, 2]
    );
    drop(redis);
}

#[test]
fn a_stopped_redis_times_out_and_a_late_batch_does_nothing() {
    let redis = RedisServer::start();
    let mut s = redis.store("a", 0);
    s.run(&[say("0.1.1", "al", room("r"), "before")]);
    redis.signal(Signal::SIGSTOP);
    let start = Instant::now();
    let done = s.run(&[say("0.1.1", "al", room("r"), "lost")]);
    let took = start.elapsed();
    assert!(matches!(done.as_slice(), [Done::Failed { .. }]), "{done:?}");
    assert!(took >= TIMEOUT && took < TIMEOUT * 3, "{took:?}");
    // Redis wakes and runs the script still in its socket: past its
    // deadline, it does nothing.
    redis.signal(Signal::SIGCONT);
    assert_eq!(ids(&s.run(&[say("0.1.1", "al", room("r"), "next")])), [2]);
    let texts: Vec<String> = history(&mut s, "al", room("r"), None, 50)
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["before", "next"]);
}

#[test]
fn the_writer_reports_redis_results_and_reaped_leaves() {
    let redis = RedisServer::start();
    let mut dead = RedisStore::new(&redis.cluster("b", 1000), 0).unwrap();
    dead.run(&[join("5.0.1.1", "bo", "r")]);
    let cluster = redis.cluster("a", 1000);
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = Writer::spawn(
        move || RedisStore::new(&cluster, 0),
        64,
        "test-writer".into(),
        move || {
            let _ = tx.send(());
        },
    )
    .unwrap();
    for i in 0..20 {
        assert!(writer.submit(say("0.1.1", "al", room("r"), &i.to_string())));
    }
    let (mut ids, mut reaped) = (Vec::new(), Vec::new());
    while ids.len() < 20 || reaped.is_empty() {
        rx.recv_timeout(WAIT).expect("woken");
        for done in writer.ready() {
            match done {
                Done::Said { message, .. } => ids.push(message.id),
                // On a loaded machine a's own heartbeat may come late and
                // find its presence expired: it puts itself back. Not what
                // this test is about (b's leave is).
                Done::Revived => {}
                other => reaped.push(other),
            }
        }
    }
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    // With no job at all, the writer's own heartbeat found b:0 dead.
    assert_eq!(gone(&reaped), ["bo@r"]);
    assert_eq!(writer.pending(), 0);
}
