//! Every stored message, published to RabbitMQ in id order (`[amqp]`): the
//! exchange `chat.messages` (durable, topic), routing key `room.NAME` for a
//! room message and `dm` for a direct one, the body the protocol's
//! `message` event.
//!
//! Each worker stores its own users' messages, so two workers' messages of
//! one room reach the loop in no fixed order; published as they are
//! stored, a consumer could see id 6 before id 5. Instead worker 0 alone
//! publishes, reading the `messages` table in id order after a cursor
//! kept in the `outbox` table (`../common/outbox.rs`): ids are given under
//! the database's write lock, so the read never skips one, and id order is
//! each room's order. Delivery to the exchange is at least once: a
//! consumer drops an id it has seen.

use crate::outbox::{self, Row, Source};
use crate::reply;
use crate::request::Target;
use crate::store::{Store, StoredMessage};
use foreman::Ctx;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The name of the cursor in the `outbox` table.
const CURSOR: &str = "amqp:chat.messages";

/// The exchange.
pub const EXCHANGE: &str = "chat.messages";

/// Worker 0's publisher of stored messages.
pub type Publisher = outbox::Publisher<Store>;

/// The routing key of a message: `room.NAME` or `dm`.
pub fn routing_key(m: &StoredMessage) -> String {
    match &m.target {
        Target::Room(r) => format!("room.{r}"),
        Target::User(_) => "dm".into(),
    }
}

impl Source for Store {
    fn rows_after(&mut self, after: i64, limit: usize) -> Result<Vec<Row>, String> {
        self.on_this_thread();
        let list = self
            .messages_after(after, limit)
            .map_err(|e| e.to_string())?;
        Ok(list
            .iter()
            .map(|m| Row {
                id: m.id,
                routing_key: routing_key(m),
                body: reply::message(m),
            })
            .collect())
    }

    fn save_cursor(&mut self, id: i64) -> Result<(), String> {
        self.on_this_thread();
        self.save_outbox_cursor(CURSOR, id)
            .map_err(|e| e.to_string())
    }
}

/// Starts publishing on worker 0, with a connection of its own to the
/// database at `db`.
pub fn start(ctx: &mut Ctx, db: PathBuf, busy_timeout: Duration) -> Publisher {
    let open = Arc::new(move || {
        let store = Store::open(&db, busy_timeout).map_err(|e| e.to_string())?;
        let cursor = store.outbox_cursor(CURSOR).map_err(|e| e.to_string())?;
        Ok((store, cursor))
    });
    Publisher::start(ctx, "chat events", EXCHANGE, open)
}
