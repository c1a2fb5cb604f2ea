//! The RabbitMQ bridge's calls ([`crate::AmqpConfig`]): publish, answer,
//! ack and reject, figures.

use super::Ctx;
use crate::amqp::{AmqpId, AmqpMessage, AmqpProperties, AmqpStats, PublishError};
use bytes::Bytes;

impl Ctx<'_> {
    /// Publishes `body` to `exchange` with `routing_key` through the
    /// RabbitMQ bridge (`[amqp]`), persistent, on a channel with publisher
    /// confirms. Returns the publish's number (1, 2, ... per worker): the
    /// broker's answer comes to [`crate::Handler::on_amqp_confirm`] with
    /// it, and counts in [`Ctx::amqp_stats`] (`confirmed`, or `failed` for a
    /// nack or a connection lost first).
    /// `""` is the default exchange, which routes to the queue named
    /// `routing_key`.
    ///
    /// Never blocks. Fails at once, sending nothing, without `[amqp]`
    /// ([`PublishError::Off`]), while the broker is not connected
    /// ([`PublishError::Down`]), or with `max_pending` publishes of this
    /// worker unconfirmed ([`PublishError::Full`]).
    pub fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
    ) -> Result<u64, PublishError> {
        self.publish_with(exchange, routing_key, body, AmqpProperties::default())
    }

    /// [`Ctx::publish`] with properties: a `correlation_id`, a `reply_to`,
    /// a `content_type`.
    pub fn publish_with(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
        props: AmqpProperties,
    ) -> Result<u64, PublishError> {
        match self.core.amqp.as_mut() {
            Some(b) => b.publish(exchange, routing_key, body.into(), props),
            None => Err(PublishError::Off),
        }
    }

    /// Answers a message of a `consume` queue (RabbitMQ's RPC pattern):
    /// publishes `body` through the default exchange to its `reply_to`,
    /// with its `correlation_id`. [`PublishError::NoReplyTo`] when it has
    /// no `reply_to`; otherwise as [`Ctx::publish`]. It does not ack `msg`.
    pub fn amqp_reply(
        &mut self,
        msg: &AmqpMessage,
        body: impl Into<Bytes>,
    ) -> Result<u64, PublishError> {
        let Some(to) = msg.reply_to.as_deref() else {
            return Err(PublishError::NoReplyTo);
        };
        let props = AmqpProperties {
            correlation_id: msg.correlation_id.clone(),
            ..AmqpProperties::default()
        };
        self.publish_with("", to, body, props)
    }

    /// Acks a message given to [`crate::Handler::on_amqp_message`]: the
    /// broker forgets it. False without `[amqp]`, or when the bridge could
    /// not take it now (then, like an id of a connection since lost, the
    /// message is delivered again later).
    pub fn amqp_ack(&mut self, id: AmqpId) -> bool {
        self.core.amqp.as_mut().is_some_and(|b| b.ack(id))
    }

    /// Rejects a message given to [`crate::Handler::on_amqp_message`]
    /// without requeue: the broker drops it (or dead-letters it, if the
    /// queue has a dead-letter exchange). False as for [`Ctx::amqp_ack`].
    pub fn amqp_reject(&mut self, id: AmqpId) -> bool {
        self.core.amqp.as_mut().is_some_and(|b| b.reject(id, false))
    }

    /// Gives a message back to its queue, for this or another consumer
    /// to take again. False as for [`Ctx::amqp_ack`].
    pub fn amqp_requeue(&mut self, id: AmqpId) -> bool {
        self.core.amqp.as_mut().is_some_and(|b| b.reject(id, true))
    }

    /// This worker's bridge figures; `None` without `[amqp]`.
    pub fn amqp_stats(&self) -> Option<AmqpStats> {
        self.core.amqp.as_ref().map(|b| b.stats())
    }
}
