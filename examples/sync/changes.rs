//! Every committed change, published to RabbitMQ (`[amqp]`): the durable
//! topic exchange `sync.changes` (`[sync] changes_exchange`), routing key
//! = the key, body = the protocol's `change` event.
//!
//! Each worker commits its own clients' writes, so two workers' versions
//! of one key reach the loops in no fixed order; published as they are
//! committed, a consumer could see version 6 before version 5. Instead
//! each write also puts its change in the `outbox_changes` table, in the
//! same transaction (`store_sqlite.rs`), and worker 0 alone publishes from
//! it in commit order (`../common/outbox.rs`), which is each key's version
//! order. A row goes once the broker has confirmed it and every row
//! before it, so after a crash or an outage the publishing goes on from
//! the first unconfirmed change: at least once, in order; a consumer drops
//! a `(key, version)` it has seen. The table holds only what RabbitMQ has
//! not confirmed: while the broker is down it grows with the writes, on
//! disk, and drains when it is back.

use crate::outbox::{self, Row, Source};
use crate::reply;
use crate::store_sqlite;
use foreman::Ctx;
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The publisher's own connection to the history database.
pub struct Outbox(Connection);

/// Worker 0's publisher of changes.
pub type Publisher = outbox::Publisher<Outbox>;

impl Source for Outbox {
    fn rows_after(&mut self, after: i64, limit: usize) -> Result<Vec<Row>, String> {
        let rows = store_sqlite::outbox_after(&self.0, after, limit).map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(seq, change)| Row {
                id: seq,
                body: reply::change(&change),
                routing_key: change.key,
            })
            .collect())
    }

    fn save_cursor(&mut self, id: i64) -> Result<(), String> {
        store_sqlite::outbox_confirmed(&self.0, id).map_err(|e| e.to_string())
    }
}

/// Starts publishing to `exchange` on worker 0. Confirmed rows are gone
/// from the table, so it starts from the first row there.
pub fn start(ctx: &mut Ctx, db: PathBuf, busy: Duration, exchange: &str) -> Publisher {
    let open = Arc::new(move || {
        let conn = store_sqlite::open_outbox(&db, busy).map_err(|e| e.to_string())?;
        Ok((Outbox(conn), 0))
    });
    Publisher::start(ctx, "sync changes", exchange, open)
}
