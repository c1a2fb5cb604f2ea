//! What the bytes mean: HTTP request heads and responses, WebSocket
//! handshakes and frames (with tungstenite), the plain protocols' framing,
//! and encoding a message once for every recipient.

pub(crate) mod codec;
pub(crate) mod http;
pub(crate) mod plain;
pub(crate) mod ws;

/// The wire protocol of a listener, chosen by the scheme of the listen URL as
/// in Workerman.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `websocket://` (also `ws://` and `http://`): HTTP/1.1 with WebSocket
    /// upgrades on the configured path; other requests go to
    /// [`crate::Handler::on_http_request`].
    WebSocket,
    /// `text://`: newline-delimited messages. A trailing `\r` is stripped on
    /// input; sends append `\n`.
    Text,
    /// `frame://`: a 4-byte big-endian length followed by the payload. As in
    /// Workerman, the length counts the 4 header bytes too (`len = 4 + payload`).
    Frame,
    /// `tcp://`: raw bytes; each read is one message, sends are written as is.
    Tcp,
}

impl Protocol {
    /// The URL scheme that selects this protocol.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::WebSocket => "websocket",
            Protocol::Text => "text",
            Protocol::Frame => "frame",
            Protocol::Tcp => "tcp",
        }
    }
}
