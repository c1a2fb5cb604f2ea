//! [`TestCert`]: a self-signed certificate for `localhost`, written as PEM
//! files, for TLS servers and clients under test.

use super::TempFile;

/// A certificate and its key in temp files (removed on drop).
pub struct TestCert {
    pub der: rustls::pki_types::CertificateDer<'static>,
    pub cert_file: TempFile,
    pub key_file: TempFile,
}

impl TestCert {
    pub fn new() -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("make a certificate");
        TestCert {
            der: made.cert.der().clone(),
            cert_file: TempFile::new("pem", &made.cert.pem()),
            key_file: TempFile::new("pem", &made.key_pair.serialize_pem()),
        }
    }

    /// The certificate's PEM file, as a CA file for clients.
    pub fn path(&self) -> &str {
        self.cert_file.path.to_str().expect("utf-8 temp path")
    }

    /// A `[server]` table that serves this certificate.
    pub fn toml(&self) -> String {
        let key = self.key_file.path.to_str().expect("utf-8 temp path");
        format!(
            "[server]\ntls_cert = {:?}\ntls_key = {key:?}\n",
            self.path()
        )
    }
}
