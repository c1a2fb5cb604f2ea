//! TLS configurations, built with rustls (ring provider) from PEM files.
//! A server's TLS 1.3 sessions hold their record keys expanded only while
//! they are in use ([`super::tls_keys`]), so an idle one costs less.
//!
//! A listener's [`server_config`] is loaded by the master before it forks
//! and again on `reload`, so a renewed certificate takes effect with the
//! replacement workers. Outbound connections use a [`client_config`]: the
//! Mozilla root store compiled into `webpki-roots` (it works the same on a
//! machine without a system certificate store), or only the CAs of a PEM file
//! the caller names. Each connection then gets its own session inside its
//! [`super::Transport`]; broadcast frames are still encoded once and only
//! encrypted per connection.
//!
//! This module knows files, not the configuration: it takes paths, and its
//! errors say which file failed and why, for the caller to name its key.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The certificate chain file is unreadable, malformed or empty.
    #[error("certificate {path:?}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key file is unreadable or malformed.
    #[error("key {path:?}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the
    /// certificate, an unsupported algorithm).
    #[error("{0}")]
    Refused(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file; an empty file is an error.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The server side of TLS for a certificate chain and its private key.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(super::tls_keys::provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| TlsError::Refused(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The client side of TLS: servers are verified against the CAs in
/// `ca_file`, or against the Mozilla roots of `webpki-roots` without one.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::Cert {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// For tests: a server config as [`server_config`] makes it (this crate's
/// provider) for a fresh self-signed `localhost` certificate, and a client
/// config on ring's own provider that trusts only that certificate.
#[cfg(test)]
pub(crate) fn test_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    test_configs_offering(None)
}

/// [`test_configs`] with a client that offers only `suite`, when given.
#[cfg(test)]
pub(crate) fn test_configs_offering(
    suite: Option<rustls::SupportedCipherSuite>,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = made.cert.der().clone();
    let key = PrivateKeyDer::try_from(made.key_pair.serialize_der()).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(super::tls_keys::provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![der.clone()], key)
        })
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client_provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        client_provider.cipher_suites = vec![suite];
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}
