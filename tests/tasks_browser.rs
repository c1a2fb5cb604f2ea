//! The task scheduler's page in a real browser: `tests/browser/tasks.mjs`
//! opens the page of a two-worker scheduler in headless Chromium while this
//! test, over the frame protocol, submits a job and runs it with a raw
//! executor. The page must show it queued, leased and succeeded with its
//! result, live; a job submitted from the page's own form must reach the
//! scheduler; after a restart on the same ports the page must reconnect by
//! itself and show the same jobs from the database; at a phone's width
//! nothing may overflow horizontally.
//!
//! The script asks for each step on the protocol's side with a line on its
//! stdout (see its header); a step that fails here is answered `FAIL ...`
//! and fails the test once the script has exited.
//!
//! Setup and skipping as in the chat's browser test (`common::browser`):
//! under CI a missing browser fails the test.

mod common;
mod tasks_util;

use common::browser;
use serde_json::json;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;
use tasks_util::{Client, Tasks};

/// The screenshots tasks.mjs takes.
const SHOTS: [&str; 4] = [
    "tasks-browser-queued.png",
    "tasks-browser-succeeded.png",
    "tasks-browser-restarted.png",
    "tasks-browser-phone.png",
];

/// The queue of the job the test submits.
const QUEUE: &str = "browser";

/// The queue the page's form submits to (tasks.mjs fills it in).
const PAGE_QUEUE: &str = "from-page";

/// What the test's side of the script holds between its lines.
struct Steps {
    tasks: Option<Tasks>,
    submitter: Option<Client>,
    executor: Option<Client>,
    restarted: bool,
}

impl Steps {
    /// The answer to one line of the script; `None` for lines that are not
    /// requests (its own progress and errors).
    fn answer(&mut self, line: &str) -> Option<String> {
        let mut words = line.splitn(3, ' ');
        let (step, id, rest) = (words.next()?, words.next(), words.next());
        let tasks = self.tasks.as_ref().expect("the scheduler");
        let submitter = self.submitter.as_mut().expect("a submitter");
        match (step, id) {
            ("SUBMIT", None) => Some(submitter.submit(
                QUEUE,
                json!({"kind": "echo", "value": "from the test"}),
                json!({}),
            )),
            ("EXECUTE", Some(id)) => {
                let mut e = Client::executor(tasks.addr(), &[QUEUE], 1);
                let job = e.next_job();
                assert_eq!(
                    (job["job"].as_str(), job["attempt"].as_u64()),
                    (Some(id), Some(1)),
                    "{job}"
                );
                assert_eq!(submitter.status(id)["state"], "leased");
                self.executor = Some(e);
                Some("ok".into())
            }
            ("DONE", Some(id)) => {
                let e = self.executor.as_mut().expect("EXECUTE came first");
                let result = json!({"answer": 42, "by": "the raw executor"});
                let r = e.request(json!({"type": "done", "job": id, "result": result}));
                assert_eq!(
                    (r["type"].as_str(), r["state"].as_str()),
                    (Some("recorded"), Some("succeeded")),
                    "{r}"
                );
                Some(result.to_string())
            }
            ("PAGEJOB", Some(id)) => {
                let value = rest.expect("PAGEJOB ID VALUE");
                let st = submitter.status(id);
                assert_eq!(
                    (
                        st["type"].as_str(),
                        st["queue"].as_str(),
                        st["state"].as_str(),
                        st["priority"].as_u64()
                    ),
                    (Some("job"), Some(PAGE_QUEUE), Some("queued"), Some(7)),
                    "the page's job as the scheduler has it: {st}"
                );
                let mut e = Client::executor(tasks.addr(), &[PAGE_QUEUE], 1);
                let job = e.next_job();
                assert_eq!(job["job"].as_str(), Some(id), "{job}");
                assert_eq!(
                    job["payload"],
                    json!({"kind": "echo", "value": value}),
                    "{job}"
                );
                let r = e.request(json!({"type": "done", "job": id, "result": {"value": value}}));
                assert_eq!(r["state"], "succeeded", "{r}");
                Some("ok".into())
            }
            ("RESTART", None) => {
                self.executor = None;
                self.submitter = None;
                let t = self
                    .tasks
                    .take()
                    .expect("the scheduler")
                    .restart_same_ports();
                self.submitter = Some(Client::submitter(t.addr()));
                self.tasks = Some(t);
                self.restarted = true;
                Some("restarted".into())
            }
            _ => None,
        }
    }
}

#[test]
fn the_page_shows_a_job_go_from_queued_to_succeeded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser::ready(root) {
        return;
    }
    let tasks = Tasks::start("browser", 2, "", "");
    tasks.server.wait_workers(2, common::REPLY_TIMEOUT);
    let url = format!("http://{}/", tasks.page_addr());
    let mut steps = Steps {
        submitter: Some(Client::submitter(tasks.addr())),
        tasks: Some(tasks),
        executor: None,
        restarted: false,
    };
    let shots = common::target_dir();
    for old in SHOTS {
        let _ = std::fs::remove_file(shots.join(old));
    }
    let mut failed = None;
    let status = browser::run_script(
        root,
        "tasks.mjs",
        &[&url, shots.to_str().expect("utf-8 path")],
        Duration::from_secs(180),
        |line| {
            if failed.is_some() {
                return None;
            }
            match catch_unwind(AssertUnwindSafe(|| steps.answer(line))) {
                Ok(answer) => answer,
                Err(e) => {
                    let why = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    failed = Some(format!("{line}: {why}"));
                    Some(format!("FAIL {}", why.lines().next().unwrap_or("")))
                }
            }
        },
    );
    if let Some(why) = failed {
        panic!("the test's side of {why}");
    }
    assert!(status.success(), "tests/browser/tasks.mjs failed: {status}");
    assert!(
        steps.restarted,
        "the page script never asked for the restart"
    );
    browser::assert_screenshots(&shots, &SHOTS);
}
