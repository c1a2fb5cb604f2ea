//! The feed's promises: in order, each once, no gap; catch-up from recent
//! versions or the store; a gap the store cannot fill closes, never skips.

use super::*;

fn conn(n: u64) -> ConnId {
    format!("0.{n}.{n}").parse().expect("a connection id")
}

fn sends(actions: &[Action<u64>], to: ConnId) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c, v) if *c == to => Some(*v),
            _ => None,
        })
        .collect()
}

const GRACE: Duration = Duration::from_millis(100);

/// Subscribes `conn` to `key` and hands it its snapshot at `version`.
fn follow(f: &mut Feeds<u64>, key: &str, conn: ConnId, version: u64) -> Vec<Action<u64>> {
    let token = f.subscribe(key, conn);
    f.snapshot(key, conn, token, version, Instant::now())
}

#[test]
fn out_of_order_arrivals_are_delivered_in_order() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let a = conn(1);
    let t_a = f.subscribe("k", a);
    assert!(f.snapshot("k", a, t_a, 3, now).is_empty());
    let mut got = Vec::new();
    for v in [5, 6, 4, 4, 3, 7] {
        got.extend(sends(&f.arrive("k", v, v, now), a));
    }
    assert_eq!(got, vec![4, 5, 6, 7]);
    assert!(!f.has_gaps());
}

#[test]
fn a_gap_that_stays_open_is_read_from_the_store() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let a = conn(1);
    let t_a = f.subscribe("k", a);
    f.snapshot("k", a, t_a, 1, now);
    assert!(f.arrive("k", 3, 3, now).is_empty());
    assert!(f.has_gaps());
    assert!(f.due(now + GRACE / 2, GRACE).is_empty());
    let due = f.due(now + GRACE, GRACE);
    assert_eq!(
        due,
        vec![Action::FeedSince {
            key: "k".into(),
            after: 1
        }]
    );
    // Asked once while the read is in flight.
    assert!(f.due(now + GRACE * 3, GRACE).is_empty());
    let filled = f.filled("k", vec![(2, 2), (3, 3)], now);
    assert_eq!(sends(&filled, a), vec![2, 3]);
    assert!(!f.has_gaps());
}

#[test]
fn a_gap_the_store_cannot_fill_closes_the_subscriber() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let (a, b) = (conn(1), conn(2));
    let t_a = f.subscribe("k", a);
    f.snapshot("k", a, t_a, 1, now);
    let t_b = f.subscribe("k", b);
    f.arrive("k", 9, 9, now);
    let filled = f.filled("k", vec![(5, 5), (6, 6), (7, 7), (8, 8)], now);
    assert!(filled.contains(&Action::Close(a)));
    assert!(sends(&filled, a).is_empty());
    assert!(!f.is_subscribed("k", a));
    // b is still waiting for its snapshot: it is not closed, and starts
    // where its snapshot says.
    assert!(f.is_subscribed("k", b));
    let later = f.snapshot("k", b, t_b, 7, now);
    assert_eq!(sends(&later, b), vec![8, 9]);
}

#[test]
fn a_snapshot_behind_the_head_is_caught_up() {
    let now = Instant::now();
    let mut f = Feeds::new(3);
    let (a, b) = (conn(1), conn(2));
    let t_a = f.subscribe("k", a);
    f.snapshot("k", a, t_a, 0, now);
    let t_b = f.subscribe("k", b);
    for v in 1..=5 {
        // b awaits its snapshot: nothing for it.
        assert!(sends(&f.arrive("k", v, v, now), b).is_empty());
    }
    // Recent holds 3..=5: a snapshot at 2 is caught up from it.
    assert_eq!(sends(&f.snapshot("k", b, t_b, 2, now), b), vec![3, 4, 5]);
    assert_eq!(sends(&f.arrive("k", 6, 6, now), b), vec![6]);
    // One at 1 needs 2, gone from recent: read from the store.
    let c = conn(3);
    let t_c = f.subscribe("k", c);
    let acts = f.snapshot("k", c, t_c, 1, now);
    assert_eq!(
        acts,
        vec![Action::ConnSince {
            conn: c,
            key: "k".into(),
            after: 1
        }]
    );
    // Versions arriving meanwhile wait; the read brings 2..=6, then 7 from
    // recent.
    assert!(sends(&f.arrive("k", 7, 7, now), c).is_empty());
    let acts = f.caught_up("k", c, vec![(2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]);
    assert_eq!(sends(&acts, c), vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(sends(&f.arrive("k", 8, 8, now), c), vec![8]);
}

#[test]
fn a_snapshot_ahead_of_the_head_skips_what_it_has() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let (a, b) = (conn(1), conn(2));
    let t_a = f.subscribe("k", a);
    f.snapshot("k", a, t_a, 2, now);
    let t_b = f.subscribe("k", b);
    // b's read saw version 4, which this worker has not been sent yet.
    assert!(f.snapshot("k", b, t_b, 4, now).is_empty());
    let mut got = (Vec::new(), Vec::new());
    for v in 3..=5 {
        let acts = f.arrive("k", v, v, now);
        got.0.extend(sends(&acts, a));
        got.1.extend(sends(&acts, b));
    }
    assert_eq!(got, (vec![3, 4, 5], vec![5]));
}

#[test]
fn subscribing_again_answers_afresh_without_doubling() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let a = conn(1);
    let t_a = f.subscribe("k", a);
    f.snapshot("k", a, t_a, 1, now);
    f.arrive("k", 2, 2, now);
    let t_a = f.subscribe("k", a);
    // Nothing while the new snapshot is on its way.
    assert!(sends(&f.arrive("k", 3, 3, now), a).is_empty());
    assert!(sends(&f.snapshot("k", a, t_a, 3, now), a).is_empty());
    assert_eq!(sends(&f.arrive("k", 4, 4, now), a), vec![4]);
    f.unsubscribe("k", a);
    assert!(f.arrive("k", 5, 5, now).is_empty());
    assert_eq!(f.len(), 0);
}

#[test]
fn the_periodic_check_reads_what_the_feed_missed() {
    let mut f: Feeds<u64> = Feeds::new(8);
    let a = conn(1);
    follow(&mut f, "k", a, 4);
    assert_eq!(f.head_seen("k", 4), None);
    assert_eq!(
        f.head_seen("k", 5),
        Some(Action::FeedSince {
            key: "k".into(),
            after: 4
        })
    );
    assert_eq!(f.head_seen("k", 6), None, "one read at a time");
    assert!(f.known_keys().is_empty(), "not while filling");
}

#[test]
fn a_writers_own_change_waits_for_its_ack() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let (a, b) = (conn(1), conn(2));
    follow(&mut f, "k", a, 1);
    follow(&mut f, "k", b, 1);
    assert!(f.hold("k", a));
    // a's write (version 3) and another's (2) are committed and come back
    // before a's ack went out: a is sent nothing yet, b everything.
    let mut acts = f.arrive("k", 3, 3, now);
    acts.extend(f.arrive("k", 2, 2, now));
    assert!(sends(&acts, a).is_empty());
    assert_eq!(sends(&acts, b), vec![2, 3]);
    // The ack is out: a gets what it missed, once, in order.
    assert_eq!(sends(&f.release("k", a), a), vec![2, 3]);
    assert_eq!(sends(&f.arrive("k", 4, 4, now), a), vec![4]);
    assert!(
        !f.hold("k", conn(9)),
        "nothing to hold for a non-subscriber"
    );
}

#[test]
fn an_old_subscribe_answer_does_not_restart_the_stream() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let (a, b) = (conn(1), conn(2));
    follow(&mut f, "k", b, 5);
    let first = f.subscribe("k", a);
    f.unsubscribe("k", a);
    let second = f.subscribe("k", a);
    // The first subscription's answer (version 5) comes, then version 6,
    // then the second's answer (version 6): a starts at 6, never sees 6
    // twice or 7 after an older snapshot.
    assert!(f.snapshot("k", a, first, 5, now).is_empty());
    assert!(sends(&f.arrive("k", 6, 6, now), a).is_empty());
    assert!(sends(&f.snapshot("k", a, second, 6, now), a).is_empty());
    assert_eq!(sends(&f.arrive("k", 7, 7, now), a), vec![7]);
    // A failure of the older one does not drop the newer.
    let third = f.subscribe("k", a);
    assert!(!f.abandon("k", a, second));
    assert!(f.is_subscribed("k", a));
    assert!(f.abandon("k", a, third));
    assert!(!f.is_subscribed("k", a));
}

#[test]
fn a_first_snapshot_below_a_hole_opens_a_gap() {
    let now = Instant::now();
    let mut f = Feeds::new(8);
    let a = conn(1);
    let token = f.subscribe("k", a);
    // Version 3 came before the snapshot; 2 was lost.
    f.arrive("k", 3, 3, now);
    f.snapshot("k", a, token, 1, now);
    assert!(f.has_gaps());
    assert_eq!(
        f.due(now + GRACE, GRACE),
        vec![Action::FeedSince {
            key: "k".into(),
            after: 1
        }]
    );
}
