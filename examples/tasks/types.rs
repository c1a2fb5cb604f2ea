//! The types every part of the scheduler shares: job states, the parsed
//! requests (`request.rs` makes them, the brain consumes them), the store's
//! rows and writes (`store.rs`), and what the job table (`jobs.rs`) asks
//! its caller to do ([`Out`]).
//!
//! Wire forms: a job id is its number in decimal (`"17"`); a string that is
//! not one is a job that is not kept. JSON values that clients send
//! (`payload`, `result`, `error`) are kept as compact JSON text, as the
//! protocol measures them.

use foreman::ConnId;
use serde::{Deserialize, Serialize};

/// A job's number; its wire form is [`job_name`].
pub type JobNo = u64;

/// The wire form of a job id.
pub fn job_name(no: JobNo) -> String {
    no.to_string()
}

/// A job id as a client wrote it, if it names a job that could exist.
pub fn job_no(name: &str) -> Option<JobNo> {
    if name.is_empty() || name.len() > 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if name.len() > 1 && name.starts_with('0') {
        return None;
    }
    name.parse().ok()
}

/// The seven states of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum State {
    /// Its delay has not passed.
    Scheduled,
    /// Ready.
    Queued,
    /// Pushed, lease running.
    Leased,
    /// Waiting out a backoff.
    Retry,
    /// Final: `done`.
    Succeeded,
    /// Final: failed for good.
    Dead,
    /// Final: cancelled before it ran.
    Cancelled,
}

impl State {
    /// Every state, in the order of [`Counts`].
    pub const ALL: [State; 7] = [
        State::Scheduled,
        State::Queued,
        State::Leased,
        State::Retry,
        State::Succeeded,
        State::Dead,
        State::Cancelled,
    ];

    /// The state as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Queued => "queued",
            State::Leased => "leased",
            State::Retry => "retry",
            State::Succeeded => "succeeded",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
        }
    }

    /// The state spelled as in [`State::as_str`] (the store's column).
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// `succeeded`, `dead` or `cancelled`.
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Dead | State::Cancelled)
    }

    /// Its index in [`State::ALL`] and [`Counts`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Jobs kept per state, indexed by [`State::index`].
pub type Counts = [u64; 7];

/// A connection's role, fixed by its `hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Hands jobs in and asks after them.
    Submitter,
    /// Runs jobs.
    Executor,
}

impl Role {
    /// The role as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Executor => "executor",
        }
    }
}

/// `hello`, its fields checked (the token is checked after, by the front).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// `submitter` or `executor`.
    pub role: Role,
    /// The client's name (1-64 of the name characters).
    pub name: String,
    /// The JWT, when sent.
    pub token: Option<String>,
    /// An executor's queues, repeats removed, in the order first named
    /// (empty for a submitter).
    pub queues: Vec<String>,
    /// An executor's capacity (1 for a submitter).
    pub capacity: u32,
}

/// `submit`, every field checked, defaults not yet applied where the
/// default comes from the config (`timeout_ms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    /// The queue.
    pub queue: String,
    /// Compact JSON text.
    pub payload: String,
    /// 0-9, 9 first.
    pub priority: u8,
    /// 0 = ready at once.
    pub delay_ms: u64,
    /// 1-100.
    pub max_attempts: u32,
    /// The lease; `None`: `default_timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// The dedup key (per queue).
    pub unique: Option<String>,
}

/// A request after the checks of `request.rs` (JSON, ref, type, hello,
/// role, fields). What needs the job table (auth comes before it, in the
/// front) is the brain's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// `hello`.
    Hello(Hello),
    /// `ping`.
    Ping,
    /// `submit`.
    Submit(Submit),
    /// `status {job}`.
    Status {
        /// The id as sent.
        job: String,
    },
    /// `watch {job}`.
    Watch {
        /// The id as sent.
        job: String,
    },
    /// `cancel {job}`.
    Cancel {
        /// The id as sent.
        job: String,
    },
    /// `stats {queue}`.
    Stats {
        /// A valid queue name.
        queue: String,
    },
    /// `extend {job}`.
    Extend {
        /// The id as sent.
        job: String,
    },
    /// `done {job, result}`.
    Done {
        /// The id as sent.
        job: String,
        /// Compact JSON text (`null` when absent).
        result: String,
    },
    /// `fail {job, error, retry}`.
    Fail {
        /// The id as sent.
        job: String,
        /// Compact JSON text (`null` when absent).
        error: String,
        /// Default true.
        retry: bool,
    },
}

/// One job as stored: a row of the `jobs` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    /// Its number.
    pub id: JobNo,
    /// Its queue.
    pub queue: String,
    /// Its state.
    pub state: State,
    /// 0-9.
    pub priority: u8,
    /// Compact JSON text.
    pub payload: String,
    /// Pushes so far.
    pub attempts: u32,
    /// 1-100.
    pub max_attempts: u32,
    /// The lease, ms.
    pub timeout_ms: u64,
    /// The dedup key.
    pub unique: Option<String>,
    /// Wall ms.
    pub created_ms: u64,
    /// Wall ms of the last change of state.
    pub updated_ms: u64,
    /// Wall ms: when a `scheduled` or `retry` job becomes `queued`, when a
    /// `leased` job's lease ends, when a final job is removed; 0 for
    /// `queued`.
    pub due_ms: u64,
    /// The order in which jobs became `queued` (FIFO within a priority):
    /// from one counter that only grows, also across restarts.
    pub ready_seq: u64,
    /// Compact JSON text, for `succeeded`.
    pub result: Option<String>,
    /// Compact JSON text (or the JSON string `"lease_expired"`,
    /// `"executor_lost"`), for `dead`.
    pub error: Option<String>,
    /// The connection (its [`ConnId`] in text) a `leased` job is leased to.
    pub lease_conn: Option<String>,
}

/// A change of one row, everything but the fields fixed at submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobUpdate {
    /// Which job.
    pub id: JobNo,
    /// Its new state.
    pub state: State,
    /// Pushes so far.
    pub attempts: u32,
    /// See [`JobRow::updated_ms`].
    pub updated_ms: u64,
    /// See [`JobRow::due_ms`].
    pub due_ms: u64,
    /// See [`JobRow::ready_seq`].
    pub ready_seq: u64,
    /// See [`JobRow::result`].
    pub result: Option<String>,
    /// See [`JobRow::error`].
    pub error: Option<String>,
    /// See [`JobRow::lease_conn`].
    pub lease_conn: Option<String>,
}

/// One change for the store; a batch of them commits in one transaction,
/// batches in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// A new job (its id is then never handed out again, even once the row
    /// is deleted).
    Insert(JobRow),
    /// A change of state.
    Update(JobUpdate),
    /// Removal after `result_retention_ms`.
    Delete(JobNo),
}

/// What the store holds at start.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// Every kept job.
    pub jobs: Vec<JobRow>,
    /// Above every id ever inserted.
    pub next_id: JobNo,
}

/// Who a reply is for: the forwarding worker's request number and the
/// connection (the front adds `ref`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag {
    /// The connection that sent the request.
    pub conn: ConnId,
    /// The front's number for it.
    pub seq: u64,
}

/// What the job table asks its caller to do, in order. A frame is sent
/// only once every [`Out::Write`] before it is committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// Store this.
    Write(Write),
    /// The answer to a request: one JSON object, without `ref`.
    Reply(Tag, String),
    /// A push to a connection: `job` to an executor, `finished` to a
    /// watcher; one JSON object.
    Push(ConnId, String),
}

/// One job as the page and `status` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    /// Its number.
    pub id: JobNo,
    /// Its queue.
    pub queue: String,
    /// Its state.
    pub state: State,
    /// 0-9.
    pub priority: u8,
    /// Pushes so far.
    pub attempts: u32,
    /// 1-100.
    pub max_attempts: u32,
    /// Wall ms.
    pub created_ms: u64,
    /// Wall ms.
    pub updated_ms: u64,
    /// Compact JSON text, when `succeeded`.
    pub result: Option<String>,
    /// Compact JSON text, when `dead`.
    pub error: Option<String>,
}

/// The config values the job table needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The lease when `submit` has no `timeout_ms`.
    pub default_timeout_ms: u64,
    /// The first retry's backoff.
    pub retry_base_ms: u64,
    /// The longest backoff.
    pub retry_max_ms: u64,
    /// How long a finished job is kept.
    pub result_retention_ms: u64,
}
