//! The `*-tls` scenarios' certificate: one self-signed certificate for
//! `localhost` (rcgen, ECDSA P-256), made once per bench process under
//! `target/bench/tls/` and handed to every server (foreman's `[server]
//! tls_cert`/`tls_key`, uWebSockets.js's `SSLApp`, the tokio peer's
//! tokio-rustls acceptor, Node's `https` under `ws`), and the load
//! generators' rustls client configuration that trusts only it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The name the certificate is for, and the one clients ask for (SNI).
pub const SERVER_NAME: &str = "localhost";

/// The certificate's files.
#[derive(Clone, Debug)]
pub struct BenchCert {
    /// PEM certificate (also the clients' only CA).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// A foreman config file serving them (`[server]` table).
    pub toml: PathBuf,
}

impl BenchCert {
    /// The process's certificate, written on first use under `out/tls/`.
    pub fn get(out: &Path) -> Result<BenchCert, String> {
        static CERT: OnceLock<Result<BenchCert, String>> = OnceLock::new();
        CERT.get_or_init(|| make(&out.join("tls"))).clone()
    }
}

fn make(dir: &Path) -> Result<BenchCert, String> {
    let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| format!("make a certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = BenchCert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        toml: dir.join("foreman-tls.toml"),
    };
    let toml = format!(
        "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
        files.cert.display().to_string(),
        files.key.display().to_string()
    );
    for (path, text) in [
        (&files.cert, made.cert.pem()),
        (&files.key, made.key_pair.serialize_pem()),
        (&files.toml, toml),
    ] {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files)
}

/// A client configuration trusting only the certificate in `ca` (PEM).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    for c in certs {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
