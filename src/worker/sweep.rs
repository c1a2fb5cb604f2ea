//! Deadlines (handshakes, kept-alive HTTP connections between requests,
//! the plain protocols' first byte, closes, idle connections, pings) and
//! stopping.

use super::Worker;
use crate::core::conn::Proto;
use crate::error::ConnError;
use crate::handler::Handler;
use crate::proto::codec;
use crate::proto::http::{Response, Stage};
use nix::sys::signal::Signal;
use std::time::Duration;

impl<H: Handler> Worker<H> {
    pub(super) fn sweep(&mut self) {
        let now = self.core.now;
        let idle = self.core.cfg.idle_timeout;
        let ping = self.core.cfg.ping_interval;
        let first_byte = self.core.cfg.handshake_timeout;
        let max_out = self.core.cfg.max_output_bytes;
        let mut expired = Vec::new();
        let mut idle_out = Vec::new();
        let mut silent = Vec::new();
        let mut to_ping = Vec::new();
        for (key, c) in self.core.conns.iter_mut() {
            if !c.marks.dirty {
                c.out.release();
            }
            if c.life.deadline().is_some_and(|d| d <= now) {
                expired.push(key);
            } else if c.life.is_open() {
                let quiet = now.saturating_duration_since(c.last_read);
                if idle.is_some_and(|i| quiet >= i) {
                    idle_out.push(key);
                } else if quiet >= first_byte
                    && !c.marks.heard
                    && matches!(c.proto, Proto::Plain(_))
                    && !c.outbound()
                {
                    silent.push(key);
                } else if ping.is_some_and(|p| quiet >= p)
                    && !c.marks.pinged
                    && matches!(c.proto, Proto::Ws(_))
                    && !c.outbound()
                {
                    c.marks.pinged = true;
                    to_ping.push(key);
                }
            } else if let Proto::Http(h) = &mut c.proto {
                // Held for output over its cap (see `try_head`): go on once
                // it is written.
                if h.held && c.marks.paused && !h.responding() && c.out.len() <= max_out {
                    c.marks.paused = false;
                    self.core.resumed.push(key);
                }
            }
        }
        for key in expired {
            let c = &self.core.conns[key];
            if let Proto::Http(h) = &c.proto {
                if let Stage::Responding(reply) = h.stage {
                    // The handler did not answer in time.
                    self.core
                        .respond(key, &Response::status(504), reply.head_only);
                    continue;
                }
                if !c.out.is_empty() {
                    // A kept-alive connection whose last answer is still
                    // being written: it goes once that is out.
                    self.core.begin_close(key, 0, "", None);
                    continue;
                }
            }
            // A connect or head that never completed, a kept-alive
            // connection that sent no next request, or a close the peer
            // never finished.
            let what = if c.life.is_connecting() {
                "connect"
            } else if c.life.is_closing() {
                "close"
            } else {
                "handshake"
            };
            self.core.drop_socket(key, Some(ConnError::Timeout(what)));
        }
        for key in idle_out {
            self.core
                .begin_close(key, 1001, "idle timeout", Some(ConnError::Timeout("idle")));
        }
        // A plain-protocol connection is open (`on_connect` ran) from its
        // accept; one that sends nothing within the handshake timeout is
        // closed like an idle one: `on_error` (timeout) and `on_close`.
        for key in silent {
            self.core
                .begin_close(key, 1001, "", Some(ConnError::Timeout("first byte")));
        }
        for key in to_ping {
            self.core.queue(key, codec::ws_frame(codec::OP_PING, b""));
        }
    }

    pub(super) fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGUSR2) if crate::report::is_request(&info) => self.answer_status(),
                Ok(Signal::SIGUSR2) => self.log_status(),
                Ok(Signal::SIGIO) if crate::report::is_request(&info) => self.answer_connections(),
                Ok(Signal::SIGIO) => {}
                sig => {
                    log::debug!("worker {} got {sig:?}: stopping", self.core.slot);
                    self.stop();
                }
            }
        }
    }

    /// Graceful stop: no more accepts or outbound attempts, every connection
    /// is closed (1001), and the loop ends when all are gone (and blocking
    /// jobs are done) or the stop timeout is near.
    fn stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        let grace = self
            .core
            .cfg
            .stop_timeout
            .saturating_sub(Duration::from_millis(200));
        self.stop_deadline = Some(self.core.now + grace);
        self.core.stopping = true;
        // The other workers no longer leave connections to this one.
        self.core.board.set_load(self.core.slot as usize, None);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for (mut l, _) in std::mem::take(&mut self.also) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.guard(None, |h, ctx| h.on_worker_stop(ctx));
        let keys: Vec<usize> = self.core.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(c) = self.core.conns.get(key) else {
                continue;
            };
            // A request head still arriving is answered (an upgrade then gets
            // 1001 at once), so a reload loses no request in flight; the
            // handshake timeout and the stop deadline bound the wait.
            if c.life.is_open() {
                self.core
                    .begin_close(key, 1001, "server shutting down", None);
            } else if c.life.is_waiting() {
                self.core.give_up(key);
            } else if matches!(&c.proto, Proto::Http(h) if h.served > 0 && h.input.is_empty()
                && matches!(h.stage, Stage::Head))
            {
                // Kept alive, between requests: closed after what it is
                // still being sent.
                self.core.begin_close(key, 0, "", None);
            } else if !c.life.is_closing() && !matches!(c.proto, Proto::Http(_)) {
                self.core.drop_socket(key, None);
            }
        }
    }
}
