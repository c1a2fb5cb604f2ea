//! The bench's own RabbitMQ client (lapin, on the bench's tokio runtime):
//! declares the push queue, binds its events queue to `chat.messages`,
//! publishes pipelined with confirms, consumes, deletes its queues.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::PublisherConfirm;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::VecDeque;
use tokio::task::JoinHandle;

/// A connection with one channel in confirm mode.
pub struct Broker {
    conn: Connection,
    ch: Channel,
}

/// What a pipelined publish got back.
pub struct Published {
    /// Publishes the broker acked.
    pub acked: usize,
    /// Publishes it nacked.
    pub nacked: usize,
    /// When the last confirm came ([`crate::users::now_us`]).
    pub last_confirm_us: u64,
}

fn err(what: &str) -> impl Fn(lapin::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Broker {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Broker, String> {
        let props = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let conn = Connection::connect(url, props)
            .await
            .map_err(err("connect to RabbitMQ"))?;
        let ch = conn.create_channel().await.map_err(err("a channel"))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err("confirm.select"))?;
        Ok(Broker { conn, ch })
    }

    /// Declares the durable `queue` (as the chat's bridge does); returns
    /// how many consumers it has.
    pub async fn declare_durable(&self, queue: &str) -> Result<u32, String> {
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .ch
            .queue_declare(queue, opts, FieldTable::default())
            .await
            .map_err(err(queue))?;
        Ok(q.consumer_count())
    }

    /// Declares the durable topic `exchange` (as the chat does) and
    /// `queue` bound to it with `#`.
    pub async fn bind_all(&self, queue: &str, exchange: &str) -> Result<(), String> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.ch
            .exchange_declare(
                exchange,
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(err(exchange))?;
        self.ch
            .queue_declare(queue, QueueDeclareOptions::default(), FieldTable::default())
            .await
            .map_err(err(queue))?;
        self.ch
            .queue_bind(
                queue,
                exchange,
                "#",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("queue.bind"))
    }

    /// Publishes `bodies` persistent to `queue` (the default exchange),
    /// keeping at most `window` unconfirmed: the next publish waits for
    /// the oldest confirm. Each body is made just before it goes (its
    /// clock stamp is then the publish's).
    pub async fn publish_window(
        &self,
        queue: &str,
        count: usize,
        mut body: impl FnMut(usize) -> String,
        window: usize,
    ) -> Result<Published, String> {
        let mut out = Published {
            acked: 0,
            nacked: 0,
            last_confirm_us: 0,
        };
        let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window);
        let settle = |c: lapin::publisher_confirm::Confirmation, out: &mut Published| {
            if c.is_ack() {
                out.acked += 1;
            } else {
                out.nacked += 1;
            }
            out.last_confirm_us = crate::users::now_us();
        };
        for k in 0..count {
            if pending.len() >= window.max(1) {
                if let Some(c) = pending.pop_front() {
                    settle(c.await.map_err(err("a confirm"))?, &mut out);
                }
            }
            let c = self
                .ch
                .basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    body(k).as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(err("basic.publish"))?;
            pending.push_back(c);
        }
        for c in pending {
            settle(c.await.map_err(err("a confirm"))?, &mut out);
        }
        Ok(out)
    }

    /// Consumes `queue` (no acks) on a channel of its own, calling `f`
    /// with each body, until the task is aborted or the queue deleted;
    /// a consume error goes to `f_err`.
    pub async fn consume(
        &self,
        queue: &str,
        f: impl Fn(&[u8]) + Send + 'static,
        f_err: impl Fn(String) + Send + 'static,
    ) -> Result<JoinHandle<()>, String> {
        let ch = self.conn.create_channel().await.map_err(err("a channel"))?;
        let opts = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut consumer = ch
            .basic_consume(queue, "foreman-bench", opts, FieldTable::default())
            .await
            .map_err(err("basic.consume"))?;
        Ok(tokio::spawn(async move {
            let _ch = ch;
            while let Some(d) = consumer.next().await {
                match d {
                    Ok(d) => f(&d.data),
                    Err(e) => {
                        f_err(format!("consuming: {e}"));
                        break;
                    }
                }
            }
        }))
    }

    /// Deletes `queue`.
    pub async fn delete(&self, queue: &str) -> Result<(), String> {
        self.ch
            .queue_delete(queue, QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(err(queue))
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "bench done").await;
    }
}
