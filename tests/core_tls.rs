//! TLS (`tls_cert` / `tls_key`): `wss://` echo and broadcast through rustls
//! clients that trust only a certificate made for the test, `https://` on the
//! same port, a client that does not speak TLS, and start-up errors that name
//! the key.

mod common;

use common::cert::TestCert as Cert;
use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tungstenite::{Message, WebSocket};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Cert {
    /// A TLS client session to `addr` that trusts only this certificate.
    fn connect(&self, addr: SocketAddr) -> TlsStream {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("trust the test certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("server name");
        let session = ClientConnection::new(Arc::new(config), name).expect("client session");
        let tcp = tcp_connect(addr, REPLY_TIMEOUT);
        tcp.set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("read timeout");
        StreamOwned::new(session, tcp)
    }

    fn websocket(&self, addr: SocketAddr) -> WebSocket<TlsStream> {
        let url = format!("wss://localhost:{}/", addr.port());
        let (ws, response) =
            tungstenite::client(url.as_str(), self.connect(addr)).expect("wss handshake");
        assert_eq!(response.status(), 101);
        ws
    }
}

fn path_str(p: &std::path::Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

fn recv_text(ws: &mut WebSocket<TlsStream>) -> String {
    loop {
        match ws.read().expect("read a message") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[test]
fn wss_echo_across_workers_including_messages_of_many_records() {
    let cert = Cert::new();
    let server = Server::start_ws("echo", 2, &[], Some(&cert.toml()));
    wait_until(REPLY_TIMEOUT, "the master logs tls=true", || {
        server.output().contains("tls=true")
    });
    let mut clients: Vec<_> = (0..20).map(|_| cert.websocket(server.addr)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        let small = format!("hello {i}");
        ws.send(Message::text(small.clone())).expect("send");
        assert_eq!(recv_text(ws), small);
        // 200 KB: a dozen TLS records each way, more than one socket write.
        let big: String = (0..200_000)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        ws.send(Message::text(big.clone())).expect("send");
        assert!(
            recv_text(ws) == big,
            "the 200 KB echo of client {i} differs"
        );
    }
    for mut ws in clients {
        ws.close(None).expect("close");
        // Our close is answered; then the stream ends.
        while ws.read().is_ok() {}
    }
}

#[test]
fn wss_broadcast_reaches_every_client() {
    let cert = Cert::new();
    let server = Server::start_ws("broadcast", 2, &["--tick-ms", "0"], Some(&cert.toml()));
    let mut clients: Vec<_> = (0..10).map(|_| cert.websocket(server.addr)).collect();
    // Every client must be registered on both workers before the send counts.
    let mut probe = cert.websocket(server.addr);
    probe.send(Message::text("ready?")).expect("send");
    for ws in clients.iter_mut() {
        assert_eq!(recv_text(ws), "ready?");
    }
    clients[3].send(Message::text("to all")).expect("send");
    for ws in clients.iter_mut() {
        assert_eq!(recv_text(ws), "to all");
    }
}

#[test]
fn https_and_plain_clients_on_a_tls_port() {
    let cert = Cert::new();
    let server = Server::start_ws("echo", 1, &[], Some(&cert.toml()));

    // Plain HTTP over TLS: the echo example answers 404 and closes.
    let mut tls = cert.connect(server.addr);
    tls.write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write request");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");

    // A client that does not speak TLS gets no WebSocket, and nothing breaks.
    let plain = Ws::try_connect(server.addr, "/", REPLY_TIMEOUT);
    assert!(plain.is_err(), "a plain upgrade on a TLS port succeeded");
    let mut ws = cert.websocket(server.addr);
    ws.send(Message::text("still here")).expect("send");
    assert_eq!(recv_text(&mut ws), "still here");
}

#[test]
fn bad_tls_settings_stop_start_up_naming_the_key() {
    let cert = Cert::new();
    let missing = PathBuf::from("/nonexistent/cert.pem");
    let cases = [
        (
            format!(
                "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
                path_str(&missing),
                path_str(&cert.key_file.path)
            ),
            "tls_cert",
        ),
        (
            format!(
                "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
                path_str(&cert.cert_file.path),
                path_str(&cert.cert_file.path)
            ),
            "tls_key",
        ),
        (
            format!(
                "[server]\ntls_cert = {:?}\n",
                path_str(&cert.cert_file.path)
            ),
            "tls_key",
        ),
    ];
    for (toml, key) in cases {
        let config = TempFile::new("toml", &toml);
        let mut cmd = Command::new(example("echo"));
        cmd.args(["--listen", "websocket://127.0.0.1:0", "-c"])
            .arg(&config.path);
        let done = run_to_exit(&mut cmd, Duration::from_secs(20));
        assert!(!done.status.success(), "{toml}: {done:?}");
        assert!(done.stderr.contains(key), "{toml}: {done:?}");
        assert!(!done.stdout.contains("listening on"), "{toml}: {done:?}");
    }
}

#[test]
fn reload_serves_a_renewed_certificate() {
    let old = Cert::new();
    let new = Cert::new();
    let pid_file = std::env::temp_dir().join(format!("foreman-tls-{}.pid", std::process::id()));
    let config = TempFile::new(
        "toml",
        &format!("{}pid_file = {:?}\n", old.toml(), path_str(&pid_file)),
    );
    let server = Server::start_ws("echo", 2, &["-c", path_str(&config.path).as_str()], None);
    let before = server.wait_workers(2, REPLY_TIMEOUT);
    let mut ws = old.websocket(server.addr);
    ws.send(Message::text("old")).expect("send");
    assert_eq!(recv_text(&mut ws), "old");
    drop(ws);

    // Renew: the new certificate and key at the same paths, then reload.
    std::fs::copy(&new.cert_file.path, &old.cert_file.path).expect("renew cert");
    std::fs::copy(&new.key_file.path, &old.key_file.path).expect("renew key");
    let mut cmd = Command::new(example("echo"));
    cmd.args(["reload", "-c"]).arg(&config.path);
    let done = run_to_exit(&mut cmd, Duration::from_secs(20));
    assert!(done.status.success(), "reload: {done:?}");
    poll_until(Duration::from_secs(15), "both workers replaced", || {
        let now = server.workers();
        (now.len() == 2 && now.iter().all(|w| !before.contains(w))).then_some(())
    });

    let mut ws = new.websocket(server.addr);
    ws.send(Message::text("new")).expect("send");
    assert_eq!(recv_text(&mut ws), "new");
    let url = format!("wss://localhost:{}/", server.addr.port());
    assert!(
        tungstenite::client(url.as_str(), old.connect(server.addr)).is_err(),
        "a client trusting only the old certificate still got in"
    );
    let _ = std::fs::remove_file(&pid_file);
}

#[test]
fn tls_under_text_protocol_opens_after_the_handshake() {
    let cert = Cert::new();
    let server = Server::start_with_toml("echo", &["--listen", "text://127.0.0.1:0"], &cert.toml());
    let mut tls = cert.connect(server.addr);
    tls.write_all(b"hello\nworld\n").expect("write");
    let mut got = Vec::new();
    while got.len() < 12 {
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).expect("read the echo");
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello\nworld\n");

    // What on_connect sends before closing reaches the client: the
    // connection opens only once its TLS handshake is done.
    let turned = Server::start_with_toml(
        "echo",
        &["--listen", "text://127.0.0.1:0", "--turn-away", "full"],
        &cert.toml(),
    );
    let mut tls = cert.connect(turned.addr);
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got);
    assert_eq!(String::from_utf8_lossy(&got), "full\n");
}
