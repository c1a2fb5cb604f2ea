//! Answers to `status` and `connections` (see [`crate::report`]), and the
//! status log line of a plain `kill -USR2`.

use super::Worker;
use crate::core::conn::Proto;
use crate::handler::Handler;
use crate::report::{self, Ask};

impl<H: Handler> Worker<H> {
    /// Answers the waiting `status` requests.
    pub(super) fn answer_status(&self) {
        let core = &self.core;
        let name = Ask::Status.answer_name(core.slot as usize);
        let tokens = report::waiting(&core.cfg, Some(Ask::Status), &name);
        if tokens.is_empty() {
            return;
        }
        let r = self.status_report();
        for token in tokens {
            report::answer(&core.cfg, &name, token, &r);
        }
    }

    /// Answers the waiting `connections` requests.
    pub(super) fn answer_connections(&self) {
        let core = &self.core;
        let name = Ask::Connections.answer_name(core.slot as usize);
        let tokens = report::waiting(&core.cfg, Some(Ask::Connections), &name);
        if tokens.is_empty() {
            return;
        }
        let conns = core
            .conns
            .iter()
            .map(|(key, c)| {
                let id = core.id_of(key, c);
                let protocol = match &c.proto {
                    Proto::Http(_) => "http",
                    _ => c.wire.protocol.scheme(),
                };
                let state = match c.dial {
                    Some(_) => format!("out {}", c.life.name()),
                    None if matches!(&c.proto, Proto::Http(h) if !h.responding()) => {
                        "request".into()
                    }
                    None => c.life.name().into(),
                };
                report::ConnRow {
                    id: id.to_string(),
                    protocol: protocol.into(),
                    state,
                    local: c
                        .io
                        .as_ref()
                        .and_then(|io| io.socket().local_addr().ok())
                        .map_or("-".into(), |a| a.to_string()),
                    peer: c.peer.to_string(),
                    queued_bytes: c.out.len(),
                    idle_ms: core.now.saturating_duration_since(c.last_read).as_millis() as u64,
                    uid: core.registry.uid_of(id).map(str::to_string),
                }
            })
            .collect();
        let r = report::ConnsReport {
            pid: std::process::id(),
            conns,
        };
        for token in tokens {
            report::answer(&core.cfg, &name, token, &r);
        }
    }

    /// This worker's figures, for `status` and for its log line.
    fn status_report(&self) -> report::WorkerReport {
        let core = &self.core;
        report::WorkerReport {
            pid: std::process::id(),
            rss_bytes: report::rss_bytes(),
            conns: core.conns.len(),
            server_conns: core.registry.conn_count(),
            uids: core.registry.uid_count(),
            timers: core.timers.len(),
            messages_in: core.stats.messages_in,
            queued_bytes: core.conns.iter().map(|(_, c)| c.out.len()).sum(),
            dropped_sends: core.stats.dropped_sends,
            bus_queued_bytes: core.bus.queued_bytes(),
            bus_dropped_bytes: core.bus.dropped_bytes,
            bus_relinks: core.bus.relinks,
            bus_gaps: core.bus.gaps,
            cluster: core.cluster_stats().map(|(s, cfg)| report::ClusterReport {
                node: cfg.node.clone(),
                redis: cfg.redis.to_string(),
                connected: s.connected,
                since_ms: s.since.map_or(0, |t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                }),
                dropped: s.dropped,
                nodes: s.nodes,
                remote_conns: s.remote_connections,
                disconnects: s.disconnects,
            }),
            amqp: core.amqp.as_ref().map(|b| {
                let s = b.stats();
                report::AmqpReport {
                    url: b.cfg.display_url(),
                    connected: s.connected,
                    since_ms: s.since.map_or(0, |t| {
                        t.duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64)
                    }),
                    consumed: s.consumed,
                    acked: s.acked,
                    rejected: s.rejected,
                    confirmed: s.confirmed,
                    failed: s.failed,
                    pending: s.pending,
                    disconnects: s.disconnects,
                }
            }),
        }
    }

    /// One status line (a plain `kill -USR2`): what `status` shows for this
    /// worker.
    pub(super) fn log_status(&self) {
        let r = self.status_report();
        log::info!(
            "status: pid {} local connections {} (server {}), uids {}, timers {}, \
             messages in {}, queued output {} B, dropped sends {}, bus queued {} B, \
             bus dropped {} B, bus relinks {}, bus gaps {}",
            r.pid,
            r.conns,
            r.server_conns,
            r.uids,
            r.timers,
            r.messages_in,
            r.queued_bytes,
            r.dropped_sends,
            r.bus_queued_bytes,
            r.bus_dropped_bytes,
            r.bus_relinks,
            r.bus_gaps,
        );
    }
}
