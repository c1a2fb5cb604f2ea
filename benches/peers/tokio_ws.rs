//! Bench peer: a tokio + tokio-tungstenite WebSocket broadcast/echo server.
//!
//! Follows the same contract as foreman's `broadcast` and `echo` examples so
//! one bench runner drives both:
//!
//! ```text
//! peer_tokio --mode broadcast|echo --listen websocket://127.0.0.1:PORT [--count N] [--tick-ms 0]
//!            [--tls-cert CERT.pem --tls-key KEY.pem]
//! ```
//!
//! - Prints `listening on websocket://HOST:PORT` (flushed) once bound.
//! - broadcast: every text message reaches every connection once, the sender
//!   included, in the shape of tokio-tungstenite's broadcast example (a map of
//!   per-peer unbounded channels behind a mutex). echo: back to its sender.
//! - `--count N` is the number of runtime worker threads (one process).
//! - `--tls-cert`/`--tls-key`: `wss://` through tokio-rustls (ring), each
//!   connection's handshake in its own task before the upgrade.
//! - SIGTERM closes every client with 1001 and exits.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[path = "../ws/nofile.rs"]
mod nofile;
use nofile::raise_nofile_limit;

/// Per-connection outgoing queues, keyed by the peer's address.
type PeerMap = Arc<Mutex<HashMap<SocketAddr, UnboundedSender<Message>>>>;

/// Set by the SIGTERM handler; the accept loop polls it.
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Broadcast,
    Echo,
}

fn main() {
    let mut mode = Mode::Broadcast;
    let mut listen = "websocket://127.0.0.1:0".to_string();
    let mut count = 1usize;
    let (mut cert, mut key) = (None, None);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--mode" if value == "echo" => mode = Mode::Echo,
            "--mode" if value == "broadcast" => mode = Mode::Broadcast,
            "--listen" => listen = value,
            "--count" => count = value.parse().unwrap_or(1).max(1),
            "--tick-ms" => {}
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            other => {
                eprintln!("peer_tokio: unexpected argument {other:?} {value:?}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let addr = listen
        .trim_start_matches("websocket://")
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_string();
    raise_nofile_limit();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(count)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some(tls_acceptor(&c, &k)),
        _ => None,
    };
    runtime.block_on(serve(&addr, mode, tls));
}

/// The TLS side of `--tls-cert`/`--tls-key`.
fn tls_acceptor(cert: &str, key: &str) -> TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .expect("read --tls-cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("read --tls-key");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .expect("TLS configuration");
    TlsAcceptor::from(Arc::new(config))
}

async fn serve(addr: &str, mode: Mode, tls: Option<TlsAcceptor>) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let local = listener.local_addr().expect("local_addr");
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on websocket://{local}");
    let _ = out.flush();

    let peers = PeerMap::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    let _ = stream.set_nodelay(true);
                    let peers = peers.clone();
                    match &tls {
                        None => {
                            tokio::spawn(handle_connection(peers, stream, peer, mode));
                        }
                        Some(acceptor) => {
                            let accept = acceptor.accept(stream);
                            tokio::spawn(async move {
                                if let Ok(stream) = accept.await {
                                    handle_connection(peers, stream, peer, mode).await;
                                }
                            });
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if TERMINATE.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    drop(listener);
    let going_away = Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "server shutting down".into(),
    }));
    for tx in peers.lock().expect("peer map").values() {
        let _ = tx.send(going_away.clone());
    }
    // Give the connection tasks a bounded moment to flush their close frames.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !peers.lock().expect("peer map").is_empty() && Instant::now() < deadline {
        tick.tick().await;
    }
}

async fn handle_connection<S>(peers: PeerMap, stream: S, addr: SocketAddr, mode: Mode)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (tx, mut rx) = unbounded_channel::<Message>();
    peers.lock().expect("peer map").insert(addr, tx.clone());
    let (mut sink, mut source) = ws.split();

    let forward = async move {
        while let Some(msg) = rx.recv().await {
            let closing = msg.is_close();
            if sink.feed(msg).await.is_err() {
                return;
            }
            // Cork: queue what is already waiting, then flush once.
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() || closing {
                return;
            }
        }
    };
    let receive = async {
        while let Some(Ok(msg)) = source.next().await {
            if !msg.is_text() {
                if msg.is_close() {
                    break;
                }
                continue;
            }
            match mode {
                Mode::Echo => {
                    let _ = tx.send(msg);
                }
                Mode::Broadcast => {
                    for peer in peers.lock().expect("peer map").values() {
                        let _ = peer.send(msg.clone());
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = forward => {}
        _ = receive => {}
    }
    peers.lock().expect("peer map").remove(&addr);
}
