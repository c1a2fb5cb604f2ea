//! The scheduler with real executors (`task_worker` processes): one
//! SIGKILLed while it holds 10 leases, and 2,000 jobs through four, each
//! finished exactly once as the submitter sees it.

mod common;
mod tasks_util;

use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tasks_util::{kill9, Client, Tasks};

/// A `task_worker` process; killed on drop.
struct Executor(Child);

impl Executor {
    fn start(t: &Tasks, name: &str, capacity: u32) -> Executor {
        let child = Command::new(common::example("task_worker"))
            .args([
                "--scheduler",
                &t.addr().to_string(),
                "--queues",
                "q",
                "--name",
                name,
            ])
            .args(["--capacity", &capacity.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start task_worker");
        Executor(child)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_executor_killed_with_ten_leases_has_them_run_elsewhere_at_once() {
    let t = Tasks::start("kill-exec", 2, "", "");
    let a = Executor::start(&t, "a", 10);
    let mut s = Client::submitter(t.addr());
    // Ten long jobs with a lease of ten minutes: only a lost connection
    // hands them out again in time.
    let ids: Vec<String> = (0..10)
        .map(|_| {
            s.submit(
                "q",
                json!({"kind": "sleep", "ms": 600_000}),
                json!({"timeout_ms": 600_000}),
            )
        })
        .collect();
    common::poll_until(common::REPLY_TIMEOUT, "all ten leased", || {
        ids.iter()
            .all(|id| s.status(id)["state"] == "leased")
            .then_some(())
    });
    let mut b = Client::executor(t.addr(), &["q"], 10);
    assert!(
        b.quiet_for(Duration::from_millis(200)),
        "b gets nothing while a holds them"
    );
    kill9(a.0.id() as i32);
    let again: HashSet<String> = (0..10)
        .map(|_| {
            let j = b.next_job();
            assert_eq!(j["attempt"], 2);
            j["job"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(again, ids.into_iter().collect());
    drop(a);
}

#[test]
fn two_thousand_jobs_through_four_executors_each_finish_once() {
    let t = Tasks::start("load", 2, "", "");
    let _execs: Vec<Executor> = (0..4)
        .map(|i| Executor::start(&t, &format!("e{i}"), 16))
        .collect();
    let mut s = Client::submitter(t.addr());
    let mut ids = Vec::new();
    for i in 0..2000 {
        s.send(&json!({"type": "submit", "queue": "q", "payload": {"kind": "echo", "value": i}, "ref": format!("s{i}")}));
    }
    for _ in 0..2000 {
        let a = s.recv_type("accepted");
        ids.push(a["job"].as_str().unwrap().to_string());
        s.send(&json!({"type": "watch", "job": a["job"]}));
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 2000);
    let mut finished: HashMap<String, usize> = HashMap::new();
    while finished.values().sum::<usize>() < 2000 {
        let f = s.recv_type("finished");
        assert_eq!(f["state"], "succeeded", "{f}");
        *finished
            .entry(f["job"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(finished.len(), 2000, "every job finished");
    assert!(finished.values().all(|n| *n == 1), "each once");
    let st = s.request(json!({"type": "stats", "queue": "q"}));
    assert_eq!(st["counts"]["succeeded"], 2000);
    // The echo result is each job's own value.
    let one = s.status(&ids[1234]);
    assert_eq!(one["result"], json!(1234));
}
