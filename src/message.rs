//! [`Message`]: what a handler receives and sends.

use bytes::Bytes;
pub use tungstenite::Utf8Bytes;

/// One whole message in or out.
///
/// For `websocket://` it is a text or binary message. For `text://` a line is
/// [`Message::Text`] when it is valid UTF-8 and [`Message::Binary`] otherwise;
/// `frame://` payloads and `tcp://` chunks are [`Message::Binary`]. Sending
/// either kind over a non-WebSocket protocol writes its bytes in that
/// protocol's framing.
///
/// Clones are cheap: the bytes are shared, not copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// UTF-8 text.
    Text(Utf8Bytes),
    /// Arbitrary bytes.
    Binary(Bytes),
}

impl Message {
    /// The text, when this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The payload bytes, whatever the kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for [`Message::Text`].
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.into())
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(s: Utf8Bytes) -> Self {
        Message::Text(s)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b.into())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}
