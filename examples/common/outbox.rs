//! An outbox read from a database, published to RabbitMQ in order through
//! the library's bridge (`[amqp]`), with publisher confirms: the chat's
//! stored messages (`chat.messages`) and the sync server's changes
//! (`sync.changes`). Each example includes it with
//! `#[path = "../common/outbox.rs"] mod outbox;`.
//!
//! Records carry ids given under the database's write lock, so once id N
//! is readable every smaller id is too, and a read after a cursor never
//! skips one. One worker (worker 0) publishes, reading records in id order
//! after a cursor ([`Outbox`]); the cursor moves only when the broker
//! confirms, and is kept in the database by the application's [`Source`],
//! so after a crash or a broker outage the publishing goes on from the last
//! confirmed record. Delivery to the exchange is at least once (a record
//! published but not confirmed before a crash or a lost connection is
//! published again) and in id order: a consumer drops an id it has seen.
//!
//! [`Outbox`] is the bookkeeping only, without I/O, so it is tested here;
//! [`Publisher`] does the I/O on the worker: reads records and saves the
//! cursor on the blocking pool (through a [`Source`], a connection of its
//! own to the database), publishes through the bridge, and follows its
//! confirms.

use foreman::{Ctx, JobId, JobResult, TimerId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// How often the publisher looks for new records and saves the cursor.
pub const POLL: Duration = Duration::from_millis(20);

/// Rows read at a time, and publishes unconfirmed at most.
pub const WINDOW: usize = 512;

/// One record to publish, as read from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its id.
    pub id: i64,
    /// Its routing key.
    pub routing_key: String,
    /// Its body.
    pub body: String,
}

/// What the worker should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read up to `limit` rows with ids above `after`.
    Read {
        /// The last id published (or confirmed, after a reset).
        after: i64,
        /// How many.
        limit: usize,
    },
    /// Nothing now: wait for confirms or the next poll.
    Wait,
}

/// The publishing state of worker 0.
#[derive(Debug)]
pub struct Outbox {
    /// Every record up to this id is confirmed by the broker.
    confirmed: i64,
    /// What the database says is confirmed (to know when to write it).
    persisted: i64,
    /// Rows are published up to this id.
    published: i64,
    /// Publishes not yet confirmed, in order: (publish number, record
    /// id, confirmed though one before it is not yet).
    in_flight: VecDeque<(u64, i64, bool)>,
    /// A read is out, of the rows after this id.
    reading: Option<i64>,
    /// Publishes in line that failed (a nack, a lost connection); those
    /// after one in line are dropped with it, uncounted.
    pub failed: u64,
}

impl Outbox {
    /// Starts after the cursor kept in the database.
    pub fn new(confirmed: i64) -> Outbox {
        Outbox {
            confirmed,
            persisted: confirmed,
            published: confirmed,
            in_flight: VecDeque::new(),
            reading: None,
            failed: 0,
        }
    }

    /// The next thing to do when polled (a timer).
    pub fn step(&mut self) -> Step {
        if self.reading.is_some() || self.in_flight.len() >= WINDOW {
            return Step::Wait;
        }
        self.reading = Some(self.published);
        Step::Read {
            after: self.published,
            limit: WINDOW - self.in_flight.len(),
        }
    }

    /// A read came back (maybe empty, or failed: `None`). Returns the rows
    /// to publish now, in order; for each, [`Outbox::published`] or, if
    /// the publish was refused, [`Outbox::refused`].
    pub fn read_done(&mut self, rows: Option<Vec<Row>>) -> Vec<Row> {
        let after = self.reading.take();
        // A reset (a failed confirm) while the read was out moved the start
        // back: these rows begin past it, so none is published now (the
        // next read starts at the new start), or records would be skipped.
        if after != Some(self.published) {
            return Vec::new();
        }
        rows.unwrap_or_default()
    }

    /// Row `id` was handed to the broker as publish number `seq`.
    pub fn published(&mut self, seq: u64, id: i64) {
        self.published = self.published.max(id);
        self.in_flight.push_back((seq, id, false));
    }

    /// Row `id` could not be published now (broker down, too many
    /// pending): it and what follows are read again at the next poll.
    pub fn refused(&mut self, id: i64) {
        self.published = self.published.min(id - 1);
    }

    /// The broker answered publish `seq`: `ok` (confirmed) or not (a nack,
    /// or the connection lost first). The cursor moves over the confirmed
    /// front of the line, so an answer out of order waits for those before
    /// it. A failure publishes again everything after the ones before it,
    /// in order.
    pub fn confirm(&mut self, seq: u64, ok: bool) {
        let Some(pos) = self.in_flight.iter().position(|f| f.0 == seq) else {
            return; // from before a reset
        };
        if !ok {
            self.failed += 1;
            self.in_flight.truncate(pos);
            self.published = self.in_flight.back().map_or(self.confirmed, |f| f.1);
            return;
        }
        self.in_flight[pos].2 = true;
        while let Some(&(_, id, true)) = self.in_flight.front() {
            self.confirmed = id;
            self.in_flight.pop_front();
        }
    }

    /// The cursor to write to the database, if it moved since the last
    /// write; call [`Outbox::persisted`] once written.
    pub fn to_persist(&self) -> Option<i64> {
        (self.confirmed > self.persisted).then_some(self.confirmed)
    }

    /// `id` is in the database as the cursor.
    pub fn persisted(&mut self, id: i64) {
        self.persisted = self.persisted.max(id);
    }

    /// Every record up to this id is confirmed.
    #[cfg(test)]
    pub fn confirmed(&self) -> i64 {
        self.confirmed
    }

    /// Publishes waiting for the broker's answer.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.in_flight.len()
    }
}

/// Where a [`Publisher`] reads records and keeps its cursor: the
/// application's own connection to its database, used on the blocking pool.
pub trait Source: Send + 'static {
    /// Up to `limit` records with ids above `after`, in id order.
    fn rows_after(&mut self, after: i64, limit: usize) -> Result<Vec<Row>, String>;
    /// Every record up to `id` is confirmed by the broker: keep the cursor
    /// (or drop those records).
    fn save_cursor(&mut self, id: i64) -> Result<(), String>;
}

/// Opens a [`Source`] and reads the cursor it keeps (0: from the start).
pub type Opener<S> = Arc<dyn Fn() -> Result<(S, i64), String> + Send + Sync>;

/// What a blocking job of the publisher brings back.
enum Done<S> {
    /// The source (opened, or given back) and the cursor read.
    Opened(S, i64),
    /// Records after the cursor (`None`: the read failed), and the limit asked.
    Rows(S, Option<Vec<Row>>, usize),
    /// The cursor was saved (or not: `None`).
    Saved(S, Option<i64>),
    /// Opening failed.
    Failed(String),
}

/// One worker's publishing of an outbox to one exchange.
pub struct Publisher<S: Source> {
    /// Names it in the log.
    name: &'static str,
    exchange: String,
    open: Opener<S>,
    /// Until the source is open and the cursor read: `None`.
    outbox: Option<Outbox>,
    /// The source, when no job holds it.
    source: Option<S>,
    /// The blocking job out, if any (one at a time: it holds the source).
    job: Option<JobId>,
    timer: Option<TimerId>,
}

impl<S: Source> Publisher<S> {
    /// Starts publishing to `exchange`: opens the source and reads the
    /// cursor, then polls every [`POLL`]. `name` names it in the log.
    pub fn start(
        ctx: &mut Ctx,
        name: &'static str,
        exchange: impl Into<String>,
        open: Opener<S>,
    ) -> Publisher<S> {
        let mut p = Publisher {
            name,
            exchange: exchange.into(),
            open,
            outbox: None,
            source: None,
            job: None,
            timer: Some(ctx.add_timer(POLL, true)),
        };
        p.open(ctx);
        p
    }

    fn open(&mut self, ctx: &mut Ctx) {
        let open = Arc::clone(&self.open);
        self.run(ctx, move || match open() {
            Ok((source, cursor)) => Done::Opened(source, cursor),
            Err(e) => Done::Failed(e),
        });
    }

    /// Runs `job` on the blocking pool. Refused, the source it held is
    /// gone with it: the next poll opens another, and a read that was out
    /// counts as failed.
    fn run(&mut self, ctx: &mut Ctx, job: impl FnOnce() -> Done<S> + Send + 'static) {
        match ctx.spawn_blocking(job) {
            Ok(id) => self.job = Some(id),
            Err(e) => {
                log::warn!("{}: the blocking pool is busy ({e}); next poll", self.name);
                self.lost_job();
            }
        }
    }

    /// A job (and the source it held) is gone without a result.
    fn lost_job(&mut self) {
        if let Some(o) = self.outbox.as_mut() {
            o.read_done(None);
        }
    }

    /// Whether `timer` is the publisher's.
    pub fn owns_timer(&self, timer: TimerId) -> bool {
        self.timer == Some(timer)
    }

    /// The poll: (re)open the source if it is gone, save the cursor if it
    /// moved, else read new records.
    pub fn poll(&mut self, ctx: &mut Ctx) {
        if self.job.is_some() {
            return;
        }
        let (Some(outbox), Some(mut source)) = (self.outbox.as_mut(), self.source.take()) else {
            return self.open(ctx);
        };
        if let Some(id) = outbox.to_persist() {
            self.run(ctx, move || {
                let saved = source.save_cursor(id).ok().map(|()| id);
                Done::Saved(source, saved)
            });
            return;
        }
        if !ctx.amqp_stats().is_some_and(|s| s.connected) {
            // Nothing could be published: no read until the broker is back.
            self.source = Some(source);
            return;
        }
        match outbox.step() {
            Step::Read { after, limit } => self.run(ctx, move || {
                let rows = source.rows_after(after, limit).ok();
                Done::Rows(source, rows, limit)
            }),
            Step::Wait => self.source = Some(source),
        }
    }

    /// A blocking job ended; false if it was not the publisher's. Polls
    /// again at once only when there may be more to do now (the source just
    /// opened, the cursor saved, or a full read all handed to the broker);
    /// otherwise the timer's next poll.
    pub fn job_done(&mut self, ctx: &mut Ctx, job: JobId, result: JobResult) -> bool {
        if self.job != Some(job) {
            return false;
        }
        self.job = None;
        let done = match result.downcast::<Done<S>>() {
            Ok(d) => d,
            Err(r) => Done::Failed(r.panic_message().unwrap_or("?").to_string()),
        };
        let again = match done {
            Done::Opened(source, cursor) => {
                if self.outbox.is_none() {
                    log::info!(
                        "{}: publishing to {} after {cursor}",
                        self.name,
                        self.exchange
                    );
                    self.outbox = Some(Outbox::new(cursor));
                }
                self.source = Some(source);
                true
            }
            Done::Saved(source, saved) => {
                if let (Some(o), Some(id)) = (self.outbox.as_mut(), saved) {
                    o.persisted(id);
                }
                self.source = Some(source);
                saved.is_some()
            }
            Done::Rows(source, rows, limit) => {
                self.source = Some(source);
                if rows.is_none() {
                    log::warn!("{}: reading new records failed; next poll", self.name);
                }
                let Some(o) = self.outbox.as_mut() else {
                    return true;
                };
                let rows = o.read_done(rows);
                let full = rows.len() == limit;
                let mut all = true;
                for row in rows {
                    match ctx.publish(&self.exchange, &row.routing_key, row.body) {
                        Ok(seq) => o.published(seq, row.id),
                        Err(e) => {
                            log::debug!("{}: record {} waits: {e}", self.name, row.id);
                            o.refused(row.id);
                            all = false;
                            break;
                        }
                    }
                }
                full && all
            }
            Done::Failed(e) => {
                log::warn!("{}: {e}; trying again at the next poll", self.name);
                self.lost_job();
                false
            }
        };
        if again {
            self.poll(ctx);
        }
        true
    }

    /// The broker answered publish `seq`.
    pub fn confirmed(&mut self, seq: u64, ok: bool) {
        if let Some(o) = self.outbox.as_mut() {
            o.confirm(seq, ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ids: std::ops::RangeInclusive<i64>) -> Vec<Row> {
        ids.map(|id| Row {
            id,
            routing_key: "room.r".into(),
            body: format!("m{id}"),
        })
        .collect()
    }

    /// Publishes what `read_done` gives, numbering publishes from `seq`.
    fn publish_all(o: &mut Outbox, got: Vec<Row>, seq: &mut u64) -> Vec<i64> {
        got.into_iter()
            .map(|r| {
                *seq += 1;
                o.published(*seq, r.id);
                r.id
            })
            .collect()
    }

    #[test]
    fn reads_after_the_cursor_and_moves_it_on_confirms_only() {
        let mut o = Outbox::new(10);
        assert_eq!(
            o.step(),
            Step::Read {
                after: 10,
                limit: WINDOW
            }
        );
        assert_eq!(o.step(), Step::Wait, "one read at a time");
        let mut seq = 0;
        let sent = read_and_publish(&mut o, 11..=13, &mut seq);
        assert_eq!(sent, vec![11, 12, 13]);
        assert_eq!(
            o.step(),
            Step::Read {
                after: 13,
                limit: WINDOW - 3
            }
        );
        o.read_done(Some(Vec::new()));
        assert_eq!(o.to_persist(), None, "nothing confirmed yet");
        o.confirm(1, true);
        o.confirm(2, true);
        assert_eq!((o.confirmed(), o.to_persist()), (12, Some(12)));
        o.persisted(12);
        assert_eq!(o.to_persist(), None);
        o.confirm(3, true);
        assert_eq!((o.confirmed(), o.pending()), (13, 0));
    }

    fn o_read(o: &mut Outbox, ids: std::ops::RangeInclusive<i64>) -> Vec<Row> {
        o.read_done(Some(rows(ids)))
    }

    /// The read of `ids` comes back and all of it is published.
    fn read_and_publish(
        o: &mut Outbox,
        ids: std::ops::RangeInclusive<i64>,
        seq: &mut u64,
    ) -> Vec<i64> {
        let got = o_read(o, ids);
        publish_all(o, got, seq)
    }

    #[test]
    fn a_failed_confirm_publishes_again_from_the_last_confirmed_in_order() {
        let mut o = Outbox::new(0);
        let mut seq = 0;
        o.step();
        read_and_publish(&mut o, 1..=4, &mut seq);
        o.confirm(1, true);
        o.confirm(2, false); // lost connection: 2, 3 and 4 are unknown
        o.confirm(3, false);
        assert_eq!(o.confirmed(), 1);
        assert_eq!(
            o.step(),
            Step::Read {
                after: 1,
                limit: WINDOW
            }
        );
        let again = read_and_publish(&mut o, 2..=4, &mut seq);
        assert_eq!(again, vec![2, 3, 4], "in order, none skipped");
        // A late answer for a publish from before the reset changes nothing.
        o.confirm(4, true);
        assert_eq!(o.confirmed(), 1);
        for s in 5..=7 {
            o.confirm(s, true);
        }
        assert_eq!((o.confirmed(), o.failed), (4, 1));
    }

    #[test]
    fn a_reset_while_a_read_is_out_skips_nothing() {
        let mut o = Outbox::new(0);
        let mut seq = 0;
        o.step();
        read_and_publish(&mut o, 1..=3, &mut seq);
        assert_eq!(
            o.step(),
            Step::Read {
                after: 3,
                limit: WINDOW - 3
            }
        );
        o.confirm(1, true);
        o.confirm(2, false); // 2 and 3 go back while rows 4.. are read
        assert!(
            o.read_done(Some(rows(4..=6))).is_empty(),
            "4.. would skip 2 and 3"
        );
        assert_eq!(
            o.step(),
            Step::Read {
                after: 1,
                limit: WINDOW
            }
        );
        let again = read_and_publish(&mut o, 2..=6, &mut seq);
        assert_eq!(again, vec![2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_refused_publish_is_read_again_and_the_window_bounds_what_is_pending() {
        let mut o = Outbox::new(0);
        let mut seq = 0;
        o.step();
        let got = o_read(&mut o, 1..=3);
        seq += 1;
        o.published(seq, got[0].id);
        o.refused(got[1].id); // broker down: 2 and 3 wait
        assert_eq!(
            o.step(),
            Step::Read {
                after: 1,
                limit: WINDOW - 1
            }
        );
        let got = o_read(&mut o, 2..=(WINDOW as i64));
        publish_all(&mut o, got, &mut seq);
        assert_eq!(o.pending(), WINDOW);
        assert_eq!(o.step(), Step::Wait, "the window is full");
        o.confirm(1, true);
        assert_eq!(
            o.step(),
            Step::Read {
                after: WINDOW as i64,
                limit: 1
            }
        );
    }
}
