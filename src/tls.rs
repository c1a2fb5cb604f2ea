//! TLS for every listener protocol (`wss://`, `https://`, TLS under `text://`
//! and the rest), with rustls: on when `tls_cert` and `tls_key` are set.
//!
//! The master loads the certificate chain and key before forking, and again
//! on `reload` (a renewed certificate takes effect with the replacement
//! workers). Each connection gets a `rustls::ServerConnection`: the worker
//! reads ciphertext into it and hands the decrypted bytes to the connection's
//! protocol exactly as it does plain bytes, and queued frames are encrypted
//! on their way to the socket ([`TlsSend`]). Broadcast frames are still
//! encoded once; only the encryption is per connection.

use crate::config::Config;
use crate::conn::SendVectored;
use crate::error::{Error, Result};
use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConnection;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// The rustls server config for `cfg`, or `None` without `tls_cert`.
pub(crate) fn server_config(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("server.tls_cert = {cert:?}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "server.tls_cert = {cert:?}: no certificate in the file"
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Config(format!("server.tls_key = {key:?}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| Error::Config(format!("server.tls_cert / tls_key: {e}")))?;
    Ok(Some(Arc::new(config)))
}

/// A connection's socket seen through its TLS session: plaintext in,
/// ciphertext out to the socket.
pub(crate) struct TlsSend<'a> {
    pub(crate) tls: &'a mut ServerConnection,
    pub(crate) sock: &'a mut TcpStream,
}

impl TlsSend<'_> {
    /// Writes the ciphertext the session holds. `Ok(true)`: none is left.
    pub(crate) fn drain(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut NoSigpipe(self.sock)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// The socket as rustls writes to it: through `sendmsg(2)` with
/// `MSG_NOSIGNAL`, like plain output, so a peer that reset never raises
/// SIGPIPE even in a program that does not ignore it.
struct NoSigpipe<'a>(&'a mut TcpStream);

impl Write for NoSigpipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SendVectored for TlsSend<'_> {
    /// Encrypts what the session takes once its earlier ciphertext is out, so
    /// the session never holds more than one batch: the rest stays in the
    /// connection's queue, counted against `max_output_bytes`.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.drain()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write_vectored(bufs)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.drain()?;
        Ok(n)
    }
}
