//! The job table's rules, driven through its public methods.

use super::*;
use serde_json::Value;

const LIMITS: Limits = Limits {
    default_timeout_ms: 1000,
    retry_base_ms: 100,
    retry_max_ms: 250,
    result_retention_ms: 5000,
};

fn conn(n: u32) -> ConnId {
    format!("0.{n}.1").parse().unwrap()
}

fn tag(n: u32) -> Tag {
    Tag {
        conn: conn(n),
        seq: 1,
    }
}

fn sub(queue: &str, priority: u8) -> Submit {
    Submit {
        queue: queue.into(),
        payload: "{}".into(),
        priority,
        delay_ms: 0,
        max_attempts: 3,
        timeout_ms: None,
        unique: None,
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// The replies in `out`, as JSON.
fn replies(out: &[Out]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            Out::Reply(_, f) => Some(json(f)),
            _ => None,
        })
        .collect()
}

/// The pushes in `out`: (connection, JSON).
fn pushes(out: &[Out]) -> Vec<(ConnId, Value)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Push(c, f) => Some((*c, json(f))),
            _ => None,
        })
        .collect()
}

fn submit(t: &mut Jobs, now: u64, s: Submit) -> String {
    let mut out = Vec::new();
    t.submit(now, tag(100), s, &mut out);
    replies(&out)[0]["job"].as_str().unwrap().to_string()
}

fn table() -> Jobs {
    Jobs::new(LIMITS, Recovered::default())
}

#[test]
fn priority_then_fifo_to_one_executor() {
    let mut t = table();
    let a = submit(&mut t, 0, sub("q", 5));
    let b = submit(&mut t, 0, sub("q", 9));
    let c = submit(&mut t, 0, sub("q", 5));
    let mut out = Vec::new();
    t.join(0, conn(1), vec!["q".into()], 1, &mut out);
    let mut order = Vec::new();
    for _ in 0..3 {
        let p = pushes(&out);
        assert_eq!(p.len(), 1, "capacity 1: one at a time");
        let job = p[0].1["job"].as_str().unwrap().to_string();
        out.clear();
        t.done(
            1,
            Tag {
                conn: conn(1),
                seq: 2,
            },
            &job,
            "null".into(),
            &mut out,
        );
        order.push(job);
    }
    assert_eq!(order, vec![b, a, c]);
}

#[test]
fn balance_by_share_then_least_recent() {
    let mut t = table();
    let mut out = Vec::new();
    t.join(0, conn(1), vec!["q".into()], 1, &mut out);
    t.join(0, conn(2), vec!["q".into()], 2, &mut out);
    t.join(0, conn(3), vec!["q".into()], 4, &mut out);
    out.clear();
    for _ in 0..7 {
        t.submit(0, tag(100), sub("q", 5), &mut out);
    }
    let to: Vec<ConnId> = pushes(&out).into_iter().map(|(c, _)| c).collect();
    // Never-given first in join order, then by share in use.
    assert_eq!(to[..3], [conn(1), conn(2), conn(3)]);
    let count = |n| to.iter().filter(|c| **c == conn(n)).count();
    assert_eq!((count(1), count(2), count(3)), (1, 2, 4), "{to:?}");
}

#[test]
fn retry_with_backoff_then_dead_with_the_error() {
    let mut t = table();
    let id = submit(
        &mut t,
        0,
        Submit {
            max_attempts: 2,
            ..sub("q", 5)
        },
    );
    let mut out = Vec::new();
    t.watch(tag(100), &id, &mut out);
    t.join(0, conn(1), vec!["q".into()], 1, &mut out);
    out.clear();
    t.fail(10, tag(1), &id, "\"boom\"".into(), true, &mut out);
    assert_eq!(replies(&out)[0]["state"], "retry");
    assert_eq!(t.next_due(), Some(110), "base 100 * 2^0");
    out.clear();
    t.tick(109, &mut out);
    assert!(pushes(&out).is_empty(), "not before the backoff");
    t.tick(110, &mut out);
    assert_eq!(pushes(&out)[0].1["attempt"], 2);
    out.clear();
    t.fail(20, tag(1), &id, "\"boom\"".into(), true, &mut out);
    assert_eq!(replies(&out)[0]["state"], "dead", "the last attempt");
    let fin = pushes(&out);
    assert_eq!(fin[0].0, conn(100));
    assert_eq!(
        (fin[0].1["type"].clone(), fin[0].1["error"].clone()),
        (json("\"finished\""), json("\"boom\""))
    );
}

#[test]
fn expiry_and_lost_executors_requeue_then_kill_on_the_last_attempt() {
    let mut t = table();
    let id = submit(
        &mut t,
        0,
        Submit {
            max_attempts: 2,
            timeout_ms: Some(100),
            ..sub("q", 5)
        },
    );
    let mut out = Vec::new();
    t.join(0, conn(1), vec!["q".into()], 1, &mut out);
    t.join(0, conn(2), vec!["q".into()], 1, &mut out);
    out.clear();
    t.tick(100, &mut out);
    let p = pushes(&out);
    assert_eq!(
        (p[0].1["job"].as_str(), p[0].1["attempt"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    assert_eq!(p[0].0, conn(2), "the other executor: least recently given");
    out.clear();
    t.done(101, tag(1), &id, "null".into(), &mut out);
    assert_eq!(replies(&out)[0]["code"], "not_leased");
    out.clear();
    t.gone(150, conn(2), &mut out);
    t.status(tag(100), &id, &mut out);
    let r = replies(&out);
    assert_eq!(
        (r[0]["state"].as_str(), r[0]["error"].as_str()),
        (Some("dead"), Some("executor_lost"))
    );
}

#[test]
fn a_lost_executors_jobs_go_back_in_their_old_order_not_by_id() {
    let mut t = table();
    let mut out = Vec::new();
    t.join(0, conn(1), vec!["q".into()], 2, &mut out);
    let a = submit(&mut t, 0, sub("q", 5));
    // `a` fails once; `b` is submitted (and leased) while `a` waits in
    // `retry`, so `b` became queued before `a` did again.
    t.fail(1, tag(1), &a, "null".into(), true, &mut out);
    let b = submit(&mut t, 2, sub("q", 5));
    t.tick(1000, &mut out);
    out.clear();
    t.gone(1001, conn(1), &mut out);
    t.join(1002, conn(2), vec!["q".into()], 1, &mut out);
    let first = pushes(&out);
    assert_eq!(first.len(), 1, "capacity 1");
    assert_eq!(first[0].1["job"].as_str(), Some(b.as_str()), "b first");
    out.clear();
    t.done(1003, tag(2), &b, "null".into(), &mut out);
    assert_eq!(pushes(&out)[0].1["job"].as_str(), Some(a.as_str()));
}

#[test]
fn cancel_unique_and_retention() {
    let mut t = table();
    let id = submit(
        &mut t,
        0,
        Submit {
            unique: Some("k".into()),
            delay_ms: 50,
            ..sub("q", 5)
        },
    );
    let mut out = Vec::new();
    t.submit(
        1,
        tag(100),
        Submit {
            unique: Some("k".into()),
            ..sub("q", 1)
        },
        &mut out,
    );
    let r = &replies(&out)[0];
    assert_eq!(
        (
            r["job"].as_str(),
            r["duplicate"].as_bool(),
            r["state"].as_str()
        ),
        (Some(id.as_str()), Some(true), Some("scheduled"))
    );
    let other = submit(
        &mut t,
        1,
        Submit {
            unique: Some("k".into()),
            ..sub("r", 1)
        },
    );
    assert_ne!(other, id, "queues do not share keys");
    out.clear();
    t.cancel(2, tag(100), &id, &mut out);
    t.cancel(3, tag(100), &id, &mut out);
    let r = replies(&out);
    assert_eq!(
        (r[0]["type"].as_str(), r[1]["type"].as_str()),
        (Some("cancelled"), Some("cancelled"))
    );
    out.clear();
    t.join(4, conn(1), vec!["q".into()], 1, &mut out);
    t.tick(60, &mut out);
    assert!(pushes(&out).is_empty(), "a cancelled job never runs");
    t.stats(tag(100), "q", &mut out);
    assert_eq!(replies(&out)[0]["counts"]["cancelled"], 1);
    out.clear();
    t.tick(2 + 5000, &mut out);
    t.status(tag(100), &id, &mut out);
    assert_eq!(replies(&out)[0]["code"], "not_found");
    let again = submit(
        &mut t,
        6000,
        Submit {
            unique: Some("k".into()),
            ..sub("q", 5)
        },
    );
    assert_ne!(again, id, "the key is free and ids are never reused");
    out.clear();
    t.cancel(6001, tag(100), &again, &mut out);
    assert_eq!(replies(&out)[0]["code"], "busy");
}

#[test]
fn recovery_keeps_live_leases_and_requeues_lost_ones() {
    let mut t = table();
    let mut out = Vec::new();
    t.join(0, conn(1), vec!["q".into()], 2, &mut out);
    t.join(0, conn(2), vec!["q".into()], 2, &mut out);
    t.submit(0, tag(100), sub("q", 5), &mut out);
    t.submit(0, tag(100), sub("q", 5), &mut out);
    // Rebuild from what was written.
    let mut rows: BTreeMap<JobNo, JobRow> = BTreeMap::new();
    for o in &out {
        match o {
            Out::Write(Write::Insert(r)) => {
                rows.insert(r.id, r.clone());
            }
            Out::Write(Write::Update(u)) => {
                let r = rows.get_mut(&u.id).unwrap();
                r.state = u.state;
                r.attempts = u.attempts;
                r.due_ms = u.due_ms;
                r.lease_conn = u.lease_conn.clone();
            }
            _ => {}
        }
    }
    let rec = Recovered {
        jobs: rows.into_values().collect(),
        next_id: 3,
    };
    let mut t = Jobs::new(LIMITS, rec);
    let mut out = Vec::new();
    t.recover_leases(10, &|c| c == conn(1), &mut out);
    t.join(10, conn(3), vec!["q".into()], 1, &mut out);
    let p = pushes(&out);
    assert_eq!(p.len(), 1, "only the lost executor's job runs again: {p:?}");
    assert_eq!((p[0].0, p[0].1["attempt"].as_u64()), (conn(3), Some(2)));
}
