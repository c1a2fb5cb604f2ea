//! The [`Handler`] trait: what a worker calls when something happens.

use crate::core::pool::{JobId, JobResult};
use crate::ctx::Ctx;
use crate::error::ConnError;
use crate::id::ConnId;
use crate::id::TimerId;
use crate::message::Message;
use crate::proto::http::{Request, Response};
use crate::proto::ws::{Accept, CloseFrame};

/// The application's callbacks, one instance per worker process.
///
/// Every method has a default that does nothing (or answers 404 for HTTP), so a
/// handler implements only what it needs. All methods run on the worker's event
/// loop thread: they must not block. Hand blocking work (disk, database, CPU
/// heavy) to [`Ctx::spawn_blocking`]; its result comes back to
/// [`Handler::on_job_done`]. (A thread of your own can come back with
/// [`Ctx::waker`] and [`Handler::on_wake`].)
///
/// # Panics
///
/// A panic inside a callback that concerns one connection (`on_connect`,
/// `on_websocket_connect`, `on_message`, `on_buffer_full`, `on_buffer_drain`)
/// is caught: that connection is closed (WebSocket close code 1011), `on_error`
/// reports [`ConnError::HandlerPanic`], and the worker goes on serving everyone
/// else. A panic in any other callback is caught and logged; the worker lives on.
///
/// # Order of calls for one WebSocket connection
///
/// `on_websocket_connect` (may refuse) -> `on_connect` -> `on_message`* ->
/// `on_close`. `on_error` may come before `on_close` when the connection ends
/// because of an error. `on_close` is called exactly once for every connection
/// that got `on_connect`, whatever ends it.
///
/// # Outbound connections
///
/// A connection opened with [`Ctx::connect`] gets the same callbacks but
/// `on_websocket_connect`: `on_connect` -> `on_message`* -> `on_close`, with
/// `on_error` alone for an attempt that failed before `on_connect`. With
/// reconnecting on, that sequence repeats with the same [`ConnId`].
#[allow(unused_variables)]
pub trait Handler: 'static {
    /// The worker's loop is ready, before the first connection is accepted.
    /// Start timers and background threads here (never before: the master forks).
    fn on_worker_start(&mut self, ctx: &mut Ctx) {}

    /// The worker is stopping: listeners are closed and clients are being closed.
    fn on_worker_stop(&mut self, ctx: &mut Ctx) {}

    /// A connection is open for messages: after the WebSocket handshake for
    /// `websocket://`, on accept for `text://`, `frame://` and `tcp://`.
    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {}

    /// A WebSocket upgrade request arrived on the configured path (and its
    /// `Origin`, if any, is on [`crate::Config::allowed_origins`]). Return
    /// `Ok(Accept::default())` to accept it, with [`Accept::protocol`] to
    /// choose one of the subprotocols the client offers
    /// ([`Request::protocols`]) and [`Accept::header`] to add headers to the
    /// 101 answer; an invalid [`Accept`] is answered `500` (see there).
    /// Return `Err(response)` to refuse it with that HTTP response (say 401
    /// or 403); the connection then never reaches `on_connect`.
    ///
    /// The connection is not open yet: `conn` is the id it will have, but
    /// sends to it and registry calls on it are ignored until `on_connect`.
    /// Keep what you learn from the request (a token, a room in the query)
    /// in your handler, keyed by `conn`, and act on it in `on_connect`.
    fn on_websocket_connect(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        request: &Request,
    ) -> Result<Accept, Response> {
        Ok(Accept::default())
    }

    /// One whole message: a WebSocket text or binary message, a `text://` line
    /// (without its newline), a `frame://` payload or a `tcp://` chunk.
    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {}

    /// The connection is gone. Sends to it from now on are no-ops.
    ///
    /// `close` is the WebSocket close frame of a peer that closed first (its
    /// code and reason); `None` when the server closed first (the peer's
    /// answer comes after this call), the stream ended without a close
    /// frame, or the protocol has no close frames.
    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, close: Option<&CloseFrame>) {}

    /// Something went wrong on a connection: a protocol error, an oversized
    /// message, a panic in a callback, a socket error.
    fn on_error(&mut self, ctx: &mut Ctx, conn: ConnId, error: &ConnError) {}

    /// The connection's queued output reached `max_output_bytes`. See
    /// [`crate::OverflowPolicy`] for what happens to further sends.
    fn on_buffer_full(&mut self, ctx: &mut Ctx, conn: ConnId) {}

    /// The connection's queued output, which was full, has been written out.
    fn on_buffer_drain(&mut self, ctx: &mut Ctx, conn: ConnId) {}

    /// A plain HTTP request (anything that is not a WebSocket upgrade on the
    /// configured path). The default answers 404.
    ///
    /// To answer later (after a blocking job, a backend call), keep
    /// [`Request::conn`] and return [`Response::later`]; then answer with
    /// [`Ctx::respond`] from any later callback of this worker. A request
    /// not answered within `handshake_timeout_ms` gets 504.
    fn on_http_request(&mut self, ctx: &mut Ctx, request: &Request) -> Response {
        Response::not_found()
    }

    /// A timer made by [`Ctx::add_timer`] is due.
    fn on_timer(&mut self, ctx: &mut Ctx, timer: TimerId) {}

    /// Somebody called [`crate::Waker::wake`] (from any thread) since the last
    /// call. Wakes are coalesced: drain your own channel here.
    fn on_wake(&mut self, ctx: &mut Ctx) {}

    /// Another worker's handler sent `data` with [`Ctx::send_to_worker`] or
    /// [`Ctx::send_to_workers`]. Per sending worker, these arrive in the order
    /// sent and in order with that worker's registry changes and deliveries.
    fn on_worker_message(&mut self, ctx: &mut Ctx, from_worker: usize, data: bytes::Bytes) {}

    /// Records that worker `from_worker` meant for this one were lost: this
    /// worker stalled (stopped, swamped) and fell `bus_peer_buffer_bytes`
    /// behind, so the sender dropped its backlog. Broadcasts, sends and
    /// registry requests among them never reached this worker's
    /// connections. The registry itself is already resynchronised.
    ///
    /// Called before anything the sender said after the gap is applied, so
    /// no connection sees a later message without first hearing of the
    /// gap. The default closes every open connection this worker accepted
    /// (WebSocket close 1013 "try again later"; a plain protocol's socket is
    /// closed) so that clients reconnect and reload what they missed;
    /// outbound connections are left alone. Override it to resynchronise
    /// your clients in place instead (send them a "reload" message, say).
    fn on_gap(&mut self, ctx: &mut Ctx, from_worker: usize) {
        ctx.close_clients(1013, "try again later");
    }

    /// A job of [`Ctx::spawn_blocking`] finished: `result` holds what it
    /// returned ([`JobResult::downcast`]) or its panic. Results arrive in the
    /// order the jobs finished.
    fn on_job_done(&mut self, ctx: &mut Ctx, job: JobId, result: JobResult) {}

    /// A message from one of the `[amqp] consume` queues (see
    /// [`crate::AmqpConfig::consume`]). The broker keeps it for this worker
    /// until you ack it with [`Ctx::amqp_ack`] (once it is durably handled:
    /// a worker that dies first gets it redelivered, to itself or another)
    /// or reject it with [`Ctx::amqp_reject`]. Answer a request with
    /// [`Ctx::amqp_reply`], which carries its `correlation_id` to its
    /// `reply_to`. The default rejects it without requeue, so that no
    /// message sits unacked for ever.
    fn on_amqp_message(&mut self, ctx: &mut Ctx, msg: &crate::AmqpMessage) {
        ctx.amqp_reject(msg.id);
    }

    /// The broker answered publish `seq` (the number [`Ctx::publish`]
    /// returned): confirmed (`ok`), or refused (a nack), or lost with the
    /// connection before its confirm came (`!ok`). Each publish gets one
    /// call. Answers usually come in publish order, but a handler that
    /// tracks them (an outbox's cursor) should not rely on it.
    fn on_amqp_confirm(&mut self, ctx: &mut Ctx, seq: u64, ok: bool) {}

    /// Asked while the worker is stopping and has no connections left: return
    /// true while background work (a writer thread, say) still has results to
    /// hand back. The loop keeps running timers and wakes until this returns
    /// false (and no job of [`Ctx::spawn_blocking`] is still running) or
    /// `stop_timeout` is near. The default is false.
    fn busy(&mut self, ctx: &mut Ctx) -> bool {
        false
    }
}
