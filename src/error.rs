//! Errors: [`Error`] for starting and running a server, [`ConnError`] for one
//! connection, [`ConnectError`] for opening one.

use std::io;
use std::path::PathBuf;

/// What can stop a server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read. Check the path and permissions.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The configuration is not valid: the message names the key and the problem.
    /// Fix the file or the command-line flag it names.
    #[error("config: {0}")]
    Config(String),
    /// The command line is not valid; the message says which argument.
    #[error("command line: {0}")]
    Usage(String),
    /// `run()` was called in a process that already has other threads. Forking
    /// such a process copies only the calling thread (and any lock another
    /// thread held), so the master refuses. Call `run()` before starting threads
    /// (a test harness, a runtime, a logger with a background thread).
    #[error("the process has {threads} threads; foreman must fork before any thread is started")]
    Threaded {
        /// How many threads the process had.
        threads: usize,
    },
    /// Binding or configuring a listening socket failed (address in use, no
    /// permission for a low port, ...).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address from the config.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// `start`: another master holds the lock of the pid file. Stop it first,
    /// or give this server a pid file of its own.
    #[error("already running as pid {pid} (pid file {pid_file})")]
    Running {
        /// The master holding the lock, as its pid file says.
        pid: i32,
        /// The pid file.
        pid_file: String,
    },
    /// `stop`, `reload`, `status`, `connections`: the pid file names no
    /// running master (it is missing, or stale: nobody holds its lock).
    /// Nothing was signalled.
    #[error("not running: {0}")]
    NotRunning(String),
    /// Another system call failed; the context names which.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// Why.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            context,
            source: source.into(),
        }
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::io("system call", io::Error::from(e))
    }
}

/// A specialised `Result` for foreman.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a connection is being closed or failed, reported to
/// [`crate::Handler::on_error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// A callback panicked while handling this connection; the connection was
    /// closed (WebSocket code 1011). The message is the panic's text.
    #[error("handler panicked: {0}")]
    HandlerPanic(String),
    /// The peer broke the protocol (bad frame, bad HTTP, bad framing length).
    /// The connection was closed (WebSocket code 1002).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A text message was not valid UTF-8 (WebSocket code 1007).
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A frame or message exceeded the configured maximum (WebSocket code 1009).
    #[error("message too big: {size} bytes, limit {limit}")]
    TooBig {
        /// The size announced or reached.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The queued output passed `max_output_bytes` under
    /// [`crate::OverflowPolicy::Close`]; the connection was closed (1008).
    #[error("output buffer overflow: {queued} bytes queued, limit {limit}")]
    Overflow {
        /// Bytes queued when it happened.
        queued: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The peer sent nothing for longer than `idle_timeout`, or did not finish
    /// its handshake in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A read or write on the socket failed (reset by peer, broken pipe, ...).
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// An outbound connect failed (refused, unreachable). With
    /// [`crate::Reconnect`] the worker tries again after a wait.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The server refused an outbound WebSocket upgrade or answered it
    /// wrongly (status, accept key, subprotocol); the text says what.
    #[error("handshake refused: {0}")]
    Handshake(String),
}

/// Why [`crate::Ctx::connect`] could not start a connection. Nothing was
/// opened; fix the call (or retry later for [`ConnectError::Io`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not one `connect` understands; the text says why.
    #[error("connect URL {0}")]
    Url(String),
    /// The TLS settings could not be used (an unreadable CA file, a bad
    /// server name).
    #[error("connect TLS: {0}")]
    Tls(String),
    /// The socket could not be made (out of file descriptors, ...).
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    /// The worker is stopping and opens nothing new.
    #[error("the worker is stopping")]
    Stopping,
}
