//! What one worker does with its own connections, and one message to many:
//! `Ctx::local_connections`, `Ctx::send_to_local`, and `Ctx::prepare` with
//! `Ctx::send_prepared` to connections on several workers.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;

/// A worker's `local_connections`, asked through `peer`.
#[track_caller]
fn local(peer: &mut Peer) -> BTreeSet<String> {
    strings(&peer.call(json!({"op": "local"}))["conns"])
        .into_iter()
        .collect()
}

/// Sends a marker to everyone from `sender`, then checks that before it the
/// open peers for which `reached(i)` holds got `msg` once and the others
/// nothing. Per sender, order is kept: a stray copy would come first.
#[track_caller]
fn expect_reached(
    peers: &mut [Peer],
    sender: usize,
    open: impl IntoIterator<Item = usize>,
    msg: &str,
    reached: impl Fn(usize) -> bool,
) {
    peers[sender].call(json!({"op": "send_to_all", "data": "marker"}));
    expect_pushes_until(peers, open, "marker", |i| {
        if reached(i) {
            vec![msg.to_string()]
        } else {
            Vec::new()
        }
    });
}

#[test]
fn local_connections_lists_the_open_connections_of_this_worker_only() {
    let server = start_testbed(2, None);
    let mut peers = connect_peers(server.addr, 12);
    for (worker, idx) in spread(&peers, 2) {
        let want: BTreeSet<String> = idx.iter().map(|&i| peers[i].conn.clone()).collect();
        assert_eq!(local(&mut peers[idx[0]]), want, "worker {worker}");
    }

    // A connection that closed is no longer listed: the server answered the
    // close, so its worker had forgotten it before the next query.
    let (worker, idx) = by_worker(&peers)
        .into_iter()
        .find(|(_, idx)| idx.len() >= 2)
        .expect("a worker with two connections");
    let gone = peers.remove(idx[1]);
    let gone_conn = gone.conn.clone();
    gone.close();
    let want: BTreeSet<String> = by_worker(&peers)[&worker]
        .iter()
        .map(|&i| peers[i].conn.clone())
        .collect();
    // idx[0] < idx[1]: removing the latter left the former in place.
    let got = local(&mut peers[idx[0]]);
    assert!(!got.contains(&gone_conn), "{gone_conn} closed: {got:?}");
    assert_eq!(got, want, "worker {worker} after a close");
}

#[test]
fn send_to_local_reaches_every_connection_of_the_senders_worker_only() {
    let server = start_testbed(2, None);
    let mut peers = connect_peers(server.addr, 12);
    let w = spread(&peers, 2);
    let sender = w[&0][0];
    let workers: Vec<usize> = peers.iter().map(|p| p.worker).collect();

    peers[sender].call(json!({"op": "send_to_local", "data": "local"}));
    expect_reached(&mut peers, sender, 0..workers.len(), "local", |i| {
        workers[i] == 0
    });
}

#[test]
fn a_prepared_message_goes_to_each_listed_connection_on_any_worker() {
    let server = start_testbed(3, None);
    let mut peers = connect_peers(server.addr, 30);
    let w = spread(&peers, 3);
    let sender = w[&0][0];

    // A connection of another worker, closed by the server: once the
    // sender's worker knows, send_prepared refuses it.
    let gone = *w[&1].last().expect("worker 1 has peers");
    let gone_conn = peers[gone].conn.clone();
    peers[sender].call(json!({"op": "close", "conn": gone_conn}));
    assert_eq!(peers[gone].ws.expect_close(REPLY_TIMEOUT), Some(1000));
    wait_until(REPLY_TIMEOUT, "worker 0 to see the close", || {
        peers[sender].call(json!({"op": "conn", "conn": gone_conn}))["online"] == json!(false)
    });

    // Two recipients on each worker, the sender among them.
    let to: Vec<usize> = w
        .values()
        .flat_map(|idx| idx.iter().copied().filter(|&i| i != gone).take(2))
        .collect();
    assert!(to.contains(&sender));
    let mut list: Vec<String> = to.iter().map(|&i| peers[i].conn.clone()).collect();
    list.push(gone_conn);
    let r = peers[sender].call(json!({"op": "send_prepared", "to": list, "data": "prepared"}));
    let mut want_ok = vec![json!(true); to.len()];
    want_ok.push(json!(false));
    assert_eq!(r["ok"], json!(want_ok), "send_prepared to {list:?}");

    // Everyone else gets nothing.
    let open = (0..peers.len()).filter(|&i| i != gone);
    expect_reached(&mut peers, sender, open, "prepared", |i| to.contains(&i));
}
