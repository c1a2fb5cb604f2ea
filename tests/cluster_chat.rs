//! The chat on a cluster (issue 11): two nodes (two masters on two ports,
//! `count = 2` each) and one Redis of the test's own. The scenarios of
//! `tests/chat_cluster.rs` and `users` of `tests/chat.rs`, with clients
//! alternating between the nodes: room messages, direct messages to every
//! connection of a user on both nodes, presence on first join and last
//! leave, `users`, history paging, ticks with the cluster-wide `online`; and
//! the users of a node that is SIGKILLed leaving the other node's rooms.

mod chat_util;
mod common;

use chat_util::scenarios::{self, before_marker, users_until};
use chat_util::Deployment;
use common::PRESENCE_TTL;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn a_room_message_reaches_members_on_the_other_node() {
    scenarios::a_room_message_reaches_members_elsewhere(Deployment::two);
}

#[test]
fn a_direct_message_reaches_every_connection_of_both_users_on_both_nodes() {
    scenarios::a_direct_message_reaches_every_connection_of_both_users(Deployment::two);
}

#[test]
fn presence_on_first_join_and_last_leave_across_nodes() {
    scenarios::presence_on_first_join_and_last_leave(Deployment::two);
}

#[test]
fn history_pages_backwards_without_gaps_across_nodes() {
    scenarios::history_pages_backwards_without_gaps(Deployment::two);
}

#[test]
fn ticks_count_the_users_of_both_nodes() {
    scenarios::ticks_go_to_logged_in_connections_only(Deployment::two);
}

#[test]
fn simultaneous_joins_and_leaves_on_two_nodes_make_one_event_each() {
    scenarios::simultaneous_joins_and_leaves_of_one_user_make_one_event_each(Deployment::two);
}

#[test]
fn users_lists_the_distinct_names_of_both_nodes() {
    scenarios::users_lists_distinct_names_sorted(Deployment::two);
}

/// Node b's master and workers SIGKILLed: node a's `users` stops listing
/// b's users within the presence TTL plus a heartbeat (plus a scheduling
/// allowance), a user with a connection on both nodes stays, and a's room
/// members get one `leave` for each user who was only on b.
#[test]
fn the_users_of_a_killed_node_leave() {
    let mut d = Deployment::two("killed", "");
    // watch on a; mark on a (another worker); five users only on b; "both"
    // on both nodes. All in room r.
    let (mut watch, mut mark) = (d.login_on("watch", 0), d.login_on("mark", 2));
    watch.join("r");
    mark.join("r");
    assert_eq!(watch.expect("presence")["user"], "mark");
    let gone: BTreeSet<String> = (0..5).map(|i| format!("b{i}")).collect();
    let mut on_b = Vec::new();
    for (i, user) in gone.iter().enumerate() {
        let mut c = d.login_on(user, 1 + 2 * (i % 2));
        c.join("r");
        let p = watch.expect("presence");
        assert_eq!((&p["user"], &p["event"]), (&json!(user), &json!("join")));
        on_b.push(c);
    }
    let mut both_a = d.login_on("both", 0);
    let mut both_b = d.login_on("both", 1);
    both_a.join("r");
    assert_eq!(watch.expect("presence")["user"], "both");
    both_b.join("r");
    let everyone: Vec<String> = ["both", "mark", "watch"]
        .into_iter()
        .map(String::from)
        .chain(gone.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // (both_a asks, since users_until skips what else comes: watch must
    // see every presence event.)
    users_until(&mut both_a, json!({"type": "users", "ref": "all"}), |v| {
        v["users"] == json!(everyone)
    });

    let killed = Instant::now();
    d.servers[1].kill_all();
    drop((on_b, both_b));
    let left = users_until(&mut both_a, json!({"type": "users", "ref": "after"}), |v| {
        v["users"].as_array().is_some_and(|u| {
            !u.iter()
                .any(|n| n.as_str().is_some_and(|n| gone.contains(n)))
        })
    });
    let took = killed.elapsed();
    let bound = PRESENCE_TTL + PRESENCE_TTL / 3 + Duration::from_secs(1);
    eprintln!("node a's users stopped listing node b's users {took:?} after the SIGKILL (bound {bound:?})");
    assert_eq!(left["users"], json!(["both", "mark", "watch"]), "{left}");
    assert!(
        took <= bound,
        "b's users listed for {took:?}, more than {bound:?}"
    );

    // One leave for each user who was only on b; "both" stays in the room.
    scenarios::expect_one_leave_each(&mut watch, &gone, "node b killed");
    assert!(
        before_marker(&mut watch, &mut mark, "r").is_empty(),
        "one leave each, none for both"
    );
    both_a.send(json!({"type": "users", "room": "r", "ref": "room"}));
    assert_eq!(
        both_a.wait_for("room users", |v| v["ref"] == "room")["users"],
        json!(["both", "mark", "watch"])
    );
}
