//! [`Dialer`]: a control client of the `dialer` example (outbound
//! connections and blocking jobs on request; see `examples/dialer.rs`).

use super::{Server, Ws, REPLY_TIMEOUT};
use serde_json::Value;

/// A `dialer` server and a control connection to one of its workers.
pub struct Dialer {
    pub server: Server,
    pub ws: Ws,
}

impl Dialer {
    /// A dialer with `count` workers and `toml` (if any) as its config.
    #[track_caller]
    pub fn start(count: usize, toml: Option<&str>) -> Dialer {
        let server = Server::start_ws("dialer", count, &[], toml);
        Dialer::attach(server)
    }

    /// A control connection to a running dialer.
    #[track_caller]
    pub fn attach(server: Server) -> Dialer {
        let ws = Ws::connect(server.addr, "/");
        Dialer { server, ws }
    }

    /// Sends one command and returns its reply, which must not be an error.
    #[track_caller]
    pub fn call(&mut self, cmd: Value) -> Value {
        self.ws.send_text(&cmd.to_string());
        let reply: Value =
            serde_json::from_str(&self.ws.recv_text(REPLY_TIMEOUT)).expect("JSON reply");
        assert!(reply.get("error").is_none(), "{cmd} -> {reply}");
        reply
    }
}
