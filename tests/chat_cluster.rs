//! The chat example across workers (`count = 2`): room messages, direct
//! messages, presence, history paging and the tick, with clients placed on
//! chosen workers (the scenarios of `chat_util::scenarios`, which
//! `tests/cluster_chat.rs` runs on two nodes), and the users of a worker that
//! dies.

mod chat_util;
mod common;

use chat_util::scenarios::{self, before_marker};
use chat_util::{ChatServer, Client, Deployment};
use serde_json::json;

#[test]
fn a_room_message_reaches_members_on_the_other_worker() {
    scenarios::a_room_message_reaches_members_elsewhere(Deployment::one);
}

#[test]
fn a_direct_message_reaches_every_connection_of_both_users() {
    scenarios::a_direct_message_reaches_every_connection_of_both_users(Deployment::one);
}

#[test]
fn presence_on_first_join_and_last_leave_across_workers() {
    scenarios::presence_on_first_join_and_last_leave(Deployment::one);
}

#[test]
fn history_pages_backwards_without_gaps() {
    scenarios::history_pages_backwards_without_gaps(Deployment::one);
}

#[test]
fn ticks_go_to_logged_in_connections_only() {
    scenarios::ticks_go_to_logged_in_connections_only(Deployment::one);
}

#[test]
fn simultaneous_joins_and_leaves_of_one_user_make_one_event_each() {
    scenarios::simultaneous_joins_and_leaves_of_one_user_make_one_event_each(Deployment::one);
}

#[test]
fn users_of_a_stopped_or_killed_worker_leave_their_rooms() {
    use nix::sys::signal::{kill, Signal};
    use std::collections::BTreeSet;
    let mut server = ChatServer::start("gone", 2, "");
    let mut watch = Client::login_on(&server, "watch", 1);
    watch.join("r");
    let mut mark = Client::login_on(&server, "mark", 1);
    mark.send(json!({"type": "join", "room": "r"}));
    mark.wait_for("joined", |v| v["type"] == "joined");
    watch.expect("presence");
    // SIGTERM: the worker closes its clients (1001) and exits; SIGKILL: it
    // just dies. Either way the members elsewhere learn that its users left,
    // once each.
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let users: BTreeSet<String> = (0..10).map(|i| format!("{signal:?}-{i}")).collect();
        let mut clients = Vec::new();
        for user in &users {
            let mut c = Client::login_on(&server, user, 0);
            c.join("r");
            let p = watch.expect("presence");
            assert_eq!((&p["user"], &p["event"]), (&json!(user), &json!("join")));
            clients.push(c);
        }
        // A slow disk, made certain: the database stays locked until the
        // stopping worker has closed every client (and so left its loop).
        let lock = rusqlite::Connection::open(server.dir.join("chat.db")).expect("open db");
        lock.execute_batch("BEGIN IMMEDIATE").expect("lock db");
        let pid = server.worker_pid(0).expect("worker 0 runs");
        kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal worker 0");
        for c in &mut clients {
            c.expect_gone();
        }
        lock.execute_batch("ROLLBACK").expect("unlock db");
        scenarios::expect_one_leave_each(&mut watch, &users, &format!("{signal:?}"));
        // The replacement is up before the next round logs in on worker 0.
        common::wait_until(chat_util::WAIT, "worker 0 is replaced", || {
            server.worker_pid(0).is_some_and(|p| p != pid)
        });
        server.wait_for_workers(2);
    }
    // Worker 0's replacement announced them: nothing more from it.
    let mut mark0 = Client::login_on(&server, "mark0", 0);
    mark0.send(json!({"type": "join", "room": "r"}));
    mark0.wait_for("joined", |v| v["type"] == "joined");
    watch.expect("presence");
    assert!(
        before_marker(&mut watch, &mut mark0, "r").is_empty(),
        "one leave each"
    );
}
