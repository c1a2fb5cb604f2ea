//! A worker killed with SIGKILL: its connections leave every count, list and
//! route within 1 s, sends to them are quiet no-ops, and its replacement
//! joins the bus.

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;
const WORKERS: usize = 4;
const VICTIM: usize = 2;

#[test]
fn sigkill_worker_leaves_the_registry_within_1s_and_sends_to_it_are_noops() {
    let server = start_testbed(WORKERS, None);
    let mut peers = connect_peers(server.addr, CLIENTS);
    let by: Vec<Vec<usize>> = spread(&peers, WORKERS).into_values().collect();
    let reps: Vec<usize> = by.iter().map(|w| w[0]).collect();

    // Every client binds a uid and joins "all"; "both" spans the victim and
    // worker 0.
    let mut truth = Truth::of(&peers);
    call_all(
        &mut peers,
        |i, _| json!({"op": "bind", "uid": format!("u{i}")}),
    );
    call_all(&mut peers, |_, _| json!({"op": "join", "group": "all"}));
    for (i, p) in peers.iter().enumerate() {
        truth.bind(&p.conn, &format!("u{i}"));
        truth.join(&p.conn, "all");
    }
    let (both_victim, both_alive) = (by[VICTIM][1], by[0][1]);
    for i in [both_victim, both_alive] {
        peers[i].call(json!({"op": "bind", "uid": "both"}));
        let conn = peers[i].conn.clone();
        truth.bind(&conn, "both");
    }
    converge(&mut peers, &reps, &truth, Duration::from_secs(2));

    // Kill the victim worker.
    let victim_pid = peers[by[VICTIM][0]].pid;
    let dead: Vec<usize> = by[VICTIM].clone();
    let dead_conns: Vec<String> = dead.iter().map(|&i| peers[i].conn.clone()).collect();
    let dead_uids: Vec<String> = dead
        .iter()
        .filter(|&&i| i != both_victim)
        .map(|&i| format!("u{i}"))
        .collect();
    for c in &dead_conns {
        truth.close(c);
    }
    let killed_at = Instant::now();
    kill(Pid::from_raw(victim_pid), Signal::SIGKILL).expect("kill");

    // Within 1 s every surviving worker's counts and lists forget it.
    let survivors: Vec<usize> = reps
        .iter()
        .copied()
        .filter(|&r| peers[r].worker != VICTIM)
        .collect();
    let took = converge(&mut peers, &survivors, &truth, Duration::from_secs(1));
    let since_kill = killed_at.elapsed();
    assert!(
        since_kill <= Duration::from_millis(1100),
        "converged {since_kill:?} after the kill"
    );
    eprintln!(
        "registry forgot {} dead connections {took:?} into polling, {since_kill:?} after the kill",
        dead.len()
    );

    // Sends to the dead are quiet no-ops: no error, no log storm, and the
    // living get exactly what is meant for them.
    let observer = reps[0];
    let errors_before: Vec<u64> = survivors
        .iter()
        .map(|&r| peers[r].stats()["errors"].as_u64().expect("errors"))
        .collect();
    let lines_before = server.output_lines();
    let mut accepted = 0;
    for round in 0..5 {
        for c in &dead_conns {
            let r = peers[observer]
                .call(json!({"op": "send_to", "to": c, "data": format!("dead-{round}")}));
            if r["ok"] == json!(true) {
                accepted += 1;
            }
        }
        peers[observer].call(json!({"op": "send_to_uid", "uids": dead_uids, "data": "dead-uid"}));
    }
    peers[observer].call(json!({"op": "send_to_uid", "uid": "both", "data": "both-1"}));
    peers[observer].call(json!({"op": "send_to_group", "group": "all", "data": "all-1"}));
    peers[observer].call(json!({"op": "send_to_all", "data": "mark"}));
    let alive: Vec<usize> = (0..CLIENTS).filter(|i| !dead.contains(i)).collect();
    expect_pushes_until(&mut peers, alive.clone(), "mark", |i| {
        if i == both_alive {
            vec!["both-1".into(), "all-1".into()]
        } else {
            vec!["all-1".into()]
        }
    });
    let sends = 5 * dead_conns.len();
    assert_eq!(
        accepted, 0,
        "send_to a dead connection returned true {accepted} of {sends} times"
    );
    let errors_after: Vec<u64> = survivors
        .iter()
        .map(|&r| peers[r].stats()["errors"].as_u64().expect("errors"))
        .collect();
    assert_eq!(
        errors_after, errors_before,
        "on_error calls on the survivors"
    );
    let new_lines = server.output_lines() - lines_before;
    assert!(
        new_lines < sends / 10,
        "{new_lines} log lines for {sends} sends to dead connections:\n{}",
        server.output()
    );

    // The replacement joins the bus: its clients get broadcasts from the
    // others and reach them.
    let replacement = poll_until(Duration::from_secs(2), "a replacement worker", || {
        server
            .workers()
            .into_iter()
            .find(|&w| w != victim_pid && !peers.iter().any(|p| p.pid == w))
    });
    let mut newcomer = None;
    for _ in 0..200 {
        let p = Peer::connect(server.addr);
        if p.pid == replacement {
            newcomer = Some(p);
            break;
        }
    }
    let mut newcomer = newcomer.expect("a client on the replacement worker (200 tries)");
    assert_eq!(
        newcomer.worker, VICTIM,
        "the replacement takes the dead worker's slot"
    );
    let nc = newcomer.conn.clone();
    wait_until(
        Duration::from_secs(1),
        "the newcomer is known to worker 0",
        || peers[observer].call(json!({"op": "conn", "conn": nc}))["online"] == json!(true),
    );
    peers[observer].call(json!({"op": "send_to_all", "data": "welcome", "exclude": []}));
    loop {
        // Other new connections made while searching also get broadcasts.
        if newcomer.expect_push() == "welcome" {
            break;
        }
    }
    let target = peers[observer].conn.clone();
    newcomer.call(json!({"op": "send_to", "to": target, "data": "hello from the replacement"}));
    assert_eq!(peers[observer].expect_push(), "welcome");
    assert_eq!(peers[observer].expect_push(), "hello from the replacement");
}
