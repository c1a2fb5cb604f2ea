//! Relay: for each client, one outbound connection to `--upstream URL`
//! (`ws://` or `wss://`); messages go both ways, and closing either side
//! closes the other. Sends to the upstream before it is up are held.
//!
//! ```text
//! cargo run --release --example echo -- --listen websocket://127.0.0.1:9000 --count 2
//! cargo run --release --example relay -- --listen websocket://127.0.0.1:8000 --count 2 --upstream ws://127.0.0.1:9000/
//! ```

use clap::Parser;
use foreman::cli::Args;
use foreman::{ConnId, ConnectOptions, Ctx, Handler, Message};
use std::collections::{HashMap, HashSet};

/// The command line: the library's commands and flags, and relay's own.
#[derive(Parser)]
#[command(
    name = "relay",
    version,
    about = "Relay: each client gets a connection to the upstream"
)]
struct Cli {
    #[command(flatten)]
    server: Args,
    /// The upstream: ws://HOST:PORT/PATH or wss://... (required)
    #[arg(long, global = true, value_name = "URL")]
    upstream: Option<String>,
    /// PEM roots to verify a wss:// upstream with, instead of Mozilla's
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<String>,
}

/// One per worker: each client's upstream and back.
struct Relay {
    upstream: String,
    ca_file: Option<String>,
    /// client -> upstream and upstream -> client.
    peer: HashMap<ConnId, ConnId>,
    /// The upstream ends of `peer`.
    upstreams: HashSet<ConnId>,
}

impl Handler for Relay {
    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        if self.upstreams.contains(&conn) {
            return; // an upstream is up: what was held goes out now
        }
        // Hold what the client says until the upstream is up (one attempt).
        let mut opts = ConnectOptions::new().hold(1 << 20);
        if let Some(ca) = &self.ca_file {
            opts = opts.ca_file(ca);
        }
        match ctx.connect(&self.upstream, opts) {
            Ok(up) => {
                self.peer.insert(conn, up);
                self.peer.insert(up, conn);
                self.upstreams.insert(up);
            }
            Err(e) => {
                log::error!("relay: {e}");
                ctx.close_with(conn, 1011, "no upstream");
            }
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        if let Some(&other) = self.peer.get(&conn) {
            ctx.send(other, msg);
        }
    }

    fn on_error(&mut self, ctx: &mut Ctx, conn: ConnId, error: &foreman::ConnError) {
        // An upstream that could not be reached (no `on_close` follows a
        // failed attempt) ends its client.
        if self.upstreams.contains(&conn) && !ctx.conn_info(conn).is_some_and(|i| i.open) {
            log::warn!("relay: upstream {conn}: {error}");
            self.on_close(ctx, conn, None);
        }
    }

    /// Either side gone: forget the pair and close the other end (a client
    /// whose upstream went gets 1011).
    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, _close: Option<&foreman::CloseFrame>) {
        if let Some(other) = self.peer.remove(&conn) {
            self.peer.remove(&other);
            let upstream_gone = self.upstreams.remove(&conn);
            self.upstreams.remove(&other);
            let code = if upstream_gone { 1011 } else { 1000 };
            ctx.close_with(other, code, "the other side closed");
        }
    }
}

fn main() -> foreman::Result<()> {
    let Cli {
        server,
        upstream,
        ca_file,
    } = Cli::parse();
    // Required, but checked here: clap cannot require a global flag.
    let upstream = upstream
        .ok_or_else(|| foreman::Error::Usage("--upstream ws://HOST:PORT/ is required".into()))?;
    foreman::Server::with_args(&server)?.run(move |_| Relay {
        upstream: upstream.clone(),
        ca_file: ca_file.clone(),
        peer: HashMap::new(),
        upstreams: HashSet::new(),
    })
}
