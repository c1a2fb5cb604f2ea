//! Every stored message, published to RabbitMQ in id order (`[amqp]`): the
//! exchange `chat.messages` (durable, topic), routing key `room.NAME` for a
//! room message and `dm` for a direct one, the body the protocol's
//! `message` event.
//!
//! # An outbox read from the history
//!
//! Each worker stores its own users' messages, so two workers' messages of
//! one room reach the loop in no fixed order; published as they are
//! stored, a consumer could see id 6 before id 5. Instead worker 0 alone
//! publishes, reading the `messages` table in id order after a cursor
//! ([`Outbox`]): ids are given under the database's write lock, so once id
//! N is readable every smaller id is too, and the read never skips one.
//! The cursor moves only when the broker confirms: it is kept in the
//! database (`outbox` table), so after a crash or a broker outage the
//! publishing goes on from the last confirmed message. Delivery to the
//! exchange is at least once (a message published but not confirmed before
//! a crash or a lost connection is published again) and in id order, which
//! is the order of each room: a consumer drops an id it has seen.
//!
//! [`Outbox`] is the bookkeeping only, without I/O, so it is tested here;
//! [`Publisher`] does what it says on worker 0: reads rows and saves the
//! cursor on the blocking pool (a connection of its own to the database),
//! publishes through the library's bridge, and follows its confirms.

use crate::reply;
use crate::request::Target;
use crate::store::{Store, StoredMessage};
use foreman::{Ctx, JobId, JobResult, TimerId};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

/// The name of the cursor in the `outbox` table.
const CURSOR: &str = "amqp:chat.messages";

/// How often worker 0 looks for new messages and saves the cursor.
pub const POLL: Duration = Duration::from_millis(20);

/// Rows read at a time, and publishes unconfirmed at most.
pub const WINDOW: usize = 512;

/// The exchange.
pub const EXCHANGE: &str = "chat.messages";

/// One stored message, as read from the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its id.
    pub id: i64,
    /// The routing key: `room.NAME` or `dm`.
    pub routing_key: String,
    /// The `message` event's JSON.
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
    /// Every message up to this id is confirmed by the broker.
    confirmed: i64,
    /// What the database says is confirmed (to know when to write it).
    persisted: i64,
    /// Rows are published up to this id.
    published: i64,
    /// Publishes not yet confirmed, in order: (publish number, message
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

    /// The next thing to do when polled (a timer, a new message stored).
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
        // next read starts at the new start), or messages would be skipped.
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

    /// Every message up to this id is confirmed.
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

/// The routing key of a message: `room.NAME` or `dm`.
pub fn routing_key(m: &StoredMessage) -> String {
    match &m.target {
        Target::Room(r) => format!("room.{r}"),
        Target::User(_) => "dm".into(),
    }
}

/// What a blocking job of the publisher brings back.
enum Done {
    /// The store connection (opened, or given back) and the cursor read.
    Opened(Store, i64),
    /// Rows after the cursor (`None`: the read failed), and the limit asked.
    Rows(Store, Option<Vec<Row>>, usize),
    /// The cursor was saved (or not: `None`).
    Saved(Store, Option<i64>),
    /// Opening failed.
    Failed(String),
}

/// Worker 0's publishing of stored messages to `chat.messages`.
pub struct Publisher {
    db: PathBuf,
    busy_timeout: Duration,
    /// Until the store is open and the cursor read: `None`.
    outbox: Option<Outbox>,
    /// The store connection, when no job holds it.
    store: Option<Store>,
    /// The blocking job out, if any (one at a time: it holds the store).
    job: Option<JobId>,
    timer: Option<TimerId>,
}

impl Publisher {
    /// Starts on worker 0: opens its own connection to the database and
    /// reads the cursor, then polls every [`POLL`].
    pub fn start(ctx: &mut Ctx, db: PathBuf, busy_timeout: Duration) -> Publisher {
        let mut p = Publisher {
            db,
            busy_timeout,
            outbox: None,
            store: None,
            job: None,
            timer: Some(ctx.add_timer(POLL, true)),
        };
        p.open(ctx);
        p
    }

    fn open(&mut self, ctx: &mut Ctx) {
        let (db, busy) = (self.db.clone(), self.busy_timeout);
        self.run(ctx, move || match Store::open(&db, busy) {
            Ok(s) => match s.outbox_cursor(CURSOR) {
                Ok(c) => Done::Opened(s, c),
                Err(e) => Done::Failed(e.to_string()),
            },
            Err(e) => Done::Failed(e.to_string()),
        });
    }

    /// Runs `job` on the blocking pool. Refused, the store it held is
    /// gone with it: the next poll opens another, and a read that was out
    /// counts as failed.
    fn run(&mut self, ctx: &mut Ctx, job: impl FnOnce() -> Done + Send + 'static) {
        match ctx.spawn_blocking(job) {
            Ok(id) => self.job = Some(id),
            Err(e) => {
                log::warn!("chat events: the blocking pool is busy ({e}); next poll");
                self.lost_job();
            }
        }
    }

    /// A job (and the store it held) is gone without a result.
    fn lost_job(&mut self) {
        if let Some(o) = self.outbox.as_mut() {
            o.read_done(None);
        }
    }

    /// Whether `timer` is the publisher's.
    pub fn owns_timer(&self, timer: TimerId) -> bool {
        self.timer == Some(timer)
    }

    /// The poll: (re)open the store if it is gone, save the cursor if it
    /// moved, else read new rows.
    pub fn poll(&mut self, ctx: &mut Ctx) {
        if self.job.is_some() {
            return;
        }
        let (Some(outbox), Some(store)) = (self.outbox.as_mut(), self.store.take()) else {
            return self.open(ctx);
        };
        if let Some(id) = outbox.to_persist() {
            self.run(ctx, move || {
                let saved = store.save_outbox_cursor(CURSOR, id).ok().map(|_| id);
                Done::Saved(store, saved)
            });
            return;
        }
        if !ctx.amqp_stats().is_some_and(|s| s.connected) {
            // Nothing could be published: no read until the broker is back.
            self.store = Some(store);
            return;
        }
        match outbox.step() {
            Step::Read { after, limit } => self.run(ctx, move || {
                let rows = store.messages_after(after, limit).ok().map(|list| {
                    list.iter()
                        .map(|m| Row {
                            id: m.id,
                            routing_key: routing_key(m),
                            body: reply::message(m),
                        })
                        .collect()
                });
                Done::Rows(store, rows, limit)
            }),
            Step::Wait => self.store = Some(store),
        }
    }

    /// A blocking job ended; false if it was not the publisher's. Polls
    /// again at once only when there may be more to do now (the store just
    /// opened, the cursor saved, or a full read all handed to the broker);
    /// otherwise the timer's next poll.
    pub fn job_done(&mut self, ctx: &mut Ctx, job: JobId, result: JobResult) -> bool {
        if self.job != Some(job) {
            return false;
        }
        self.job = None;
        let done = match result.downcast::<Done>() {
            Ok(d) => d,
            Err(r) => Done::Failed(r.panic_message().unwrap_or("?").to_string()),
        };
        let again = match done {
            Done::Opened(store, cursor) => {
                if self.outbox.is_none() {
                    log::info!("chat events: publishing to {EXCHANGE} after message {cursor}");
                    self.outbox = Some(Outbox::new(cursor));
                }
                self.store = Some(store);
                true
            }
            Done::Saved(store, saved) => {
                if let (Some(o), Some(id)) = (self.outbox.as_mut(), saved) {
                    o.persisted(id);
                }
                self.store = Some(store);
                saved.is_some()
            }
            Done::Rows(store, rows, limit) => {
                self.store = Some(store);
                if rows.is_none() {
                    log::warn!("chat events: reading new messages failed; next poll");
                }
                let Some(o) = self.outbox.as_mut() else {
                    return true;
                };
                let rows = o.read_done(rows);
                let full = rows.len() == limit;
                let mut all = true;
                for row in rows {
                    match ctx.publish(EXCHANGE, &row.routing_key, row.body) {
                        Ok(seq) => o.published(seq, row.id),
                        Err(e) => {
                            log::debug!("chat events: message {} waits: {e}", row.id);
                            o.refused(row.id);
                            all = false;
                            break;
                        }
                    }
                }
                full && all
            }
            Done::Failed(e) => {
                log::warn!("chat events: {e}; trying again at the next poll");
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
