//! The master and its workers, seen from outside: `echo` with two workers
//! under 200 clients in both listener modes, a worker killed with SIGKILL,
//! and a graceful stop with SIGTERM.

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;

fn start_echo(reuse_port: bool) -> Server {
    let extra: &[&str] = if reuse_port { &["--reuse-port"] } else { &[] };
    Server::start_ws("echo", 2, extra, None)
}

/// Which worker pid serves each client, by the client's position.
#[track_caller]
fn owners_of(server: &Server, workers: &[i32], clients: &[Ws]) -> Vec<i32> {
    let owners = poll_until(
        REPLY_TIMEOUT,
        "every client's socket held by a worker",
        || {
            let map = conn_owners(server.port(), workers);
            clients
                .iter()
                .map(|c| map.get(&c.local_port()).copied())
                .collect::<Option<Vec<i32>>>()
        },
    );
    owners
}

/// Every client sends a message of its own, then every client reads its echo.
#[track_caller]
fn echo_round(clients: &mut [Ws], round: &str) {
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_text(&format!("{round}-{i}"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        match c.recv(REPLY_TIMEOUT) {
            Recv::Text(t) => assert_eq!(t, format!("{round}-{i}"), "client {i}, round {round}"),
            other => panic!("client {i}, round {round}: expected its echo, got {other:?}"),
        }
    }
}

fn two_hundred_clients(reuse_port: bool) {
    let server = start_echo(reuse_port);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let mut clients = connect_many(server.addr, "/", CLIENTS);

    for round in 0..3 {
        echo_round(&mut clients, &format!("r{round}"));
    }
    // Binary messages of several sizes, all in flight at once.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_binary(vec![i as u8; 1 + (i % 7) * 9_000]);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.recv(REPLY_TIMEOUT),
            Recv::Binary(vec![i as u8; 1 + (i % 7) * 9_000]),
            "client {i}: binary echo"
        );
    }

    let owners = owners_of(&server, &workers, &clients);
    let mut per_worker: HashMap<i32, usize> = HashMap::new();
    for pid in owners {
        *per_worker.entry(pid).or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        2,
        "both workers should serve clients (reuse_port = {reuse_port}), got {per_worker:?}"
    );
    assert_eq!(server.workers(), workers, "no worker was replaced");
}

#[test]
fn echo_two_workers_200_clients_shared_listener() {
    two_hundred_clients(false);
}

#[test]
fn echo_two_workers_200_clients_reuse_port() {
    two_hundred_clients(true);
}

fn sigkill_one_worker(reuse_port: bool) {
    let server = start_echo(reuse_port);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let mut clients = connect_many(server.addr, "/", 40);
    let mut owners = owners_of(&server, &workers, &clients);
    // Make sure both workers hold clients (the kernel may balance unevenly).
    while owners.iter().all(|&o| o == owners[0]) && clients.len() < CLIENTS {
        clients.push(Ws::connect(server.addr, "/"));
        owners = owners_of(&server, &workers, &clients);
    }
    let victim = owners[0];
    let survivor = *workers.iter().find(|&&w| w != victim).expect("two workers");
    assert!(
        owners.contains(&survivor),
        "no client landed on worker {survivor}"
    );
    echo_round(&mut clients, "before");

    let killed_at = Instant::now();
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill worker");

    // A replacement appears and serves a new client within 2 s.
    let replacement = poll_until(Duration::from_secs(2), "a replacement worker", || {
        server.workers().into_iter().find(|w| !workers.contains(w))
    });
    let mut probes = Vec::new();
    let served = loop {
        assert!(
            killed_at.elapsed() < Duration::from_secs(2),
            "no client was served by the replacement {replacement} within 2 s of the kill \
             ({} probes, all served by others)",
            probes.len()
        );
        let mut batch = connect_many(server.addr, "/", 4);
        echo_round(&mut batch, "probe");
        let map = conn_owners(server.port(), &[replacement]);
        let hit = batch.iter().position(|c| map.contains_key(&c.local_port()));
        if let Some(i) = hit {
            break batch.swap_remove(i);
        }
        probes.extend(batch);
    };
    let took = killed_at.elapsed();
    drop(served);

    // The victim's clients lost their connection; the survivor's never noticed.
    for (i, c) in clients.iter_mut().enumerate() {
        if owners[i] == victim {
            match c.recv(Duration::from_secs(2)) {
                Recv::Gone(_) | Recv::Close(_) => {}
                other => panic!("client {i} of the killed worker: expected its end, got {other:?}"),
            }
        }
    }
    let mut kept: Vec<Ws> = clients
        .into_iter()
        .zip(&owners)
        .filter(|(_, &o)| o == survivor)
        .map(|(c, _)| c)
        .collect();
    // The first thing each survivor's client reads is its own echo: nothing
    // (no close, no error) arrived in between.
    echo_round(&mut kept, "after");
    assert!(
        is_alive(survivor),
        "the surviving worker is still the same process"
    );
    eprintln!("replacement served a client {took:?} after the kill (reuse_port = {reuse_port})");
}

#[test]
fn sigkill_worker_is_replaced_and_others_clients_never_notice_shared_listener() {
    sigkill_one_worker(false);
}

#[test]
fn sigkill_worker_is_replaced_and_others_clients_never_notice_reuse_port() {
    sigkill_one_worker(true);
}

#[test]
fn sigterm_closes_every_client_with_1001_and_every_process_exits() {
    let mut server = start_echo(false);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let mut clients = connect_many(server.addr, "/", 50);
    echo_round(&mut clients, "hello");
    let owners = owners_of(&server, &workers, &clients);

    server.signal(Signal::SIGTERM);
    for (i, c) in clients.iter_mut().enumerate() {
        match c.recv(Duration::from_secs(10)) {
            Recv::Close(code) => assert_eq!(code, Some(1001), "client {i} (worker {})", owners[i]),
            other => panic!(
                "client {i} (worker {}): expected close 1001, got {other:?}",
                owners[i]
            ),
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("the master exits after SIGTERM");
    assert!(status.success(), "the master exits 0, got {status:?}");
    wait_until(
        Duration::from_secs(5),
        "every worker process is gone",
        || workers.iter().all(|&w| !is_alive(w)),
    );
}

/// The owner map from netlink and from /proc/net/tcp agree (the test above
/// trusts the fast one).
#[test]
fn socket_owners_from_sock_diag_match_proc_net_tcp() {
    let server = start_echo(false);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let mut clients = connect_many(server.addr, "/", 10);
    echo_round(&mut clients, "x");
    let fast = sockdiag::established_by_local_port(server.port()).expect("sock_diag works here");
    let slow = accepted_sockets(server.port());
    for c in &clients {
        let p = c.local_port();
        assert!(
            fast.contains_key(&p),
            "sock_diag lists client port {p}: {fast:?}"
        );
        assert_eq!(
            fast.get(&p),
            slow.get(&p),
            "inode of the server side of port {p}"
        );
    }
    let owners = conn_owners(server.port(), &workers);
    assert_eq!(owners.len(), clients.len(), "{owners:?}");
}
