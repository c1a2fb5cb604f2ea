//! More listeners than one (`also_listen`): a server on `websocket://` that
//! also listens on `text://` serves both, each connection in its own
//! protocol, and a broadcast from one reaches the other's clients, on
//! every worker.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

/// The address of the master's `also listening on text://ADDR` line.
fn also_addr(server: &Server) -> SocketAddr {
    poll_until(REPLY_TIMEOUT, "an `also listening on` line", || {
        server.output().lines().find_map(|l| {
            let url = l.split("also listening on ").nth(1)?;
            url.trim().strip_prefix("text://")?.parse().ok()
        })
    })
}

#[test]
fn a_text_listener_beside_websocket_shares_broadcasts_both_ways() {
    let toml = "[server]\nalso_listen = [\"text://127.0.0.1:0\"]\n";
    let server = Server::start_ws("broadcast", 2, &[], Some(toml));
    server.wait_workers(2, REPLY_TIMEOUT);
    let text_addr = also_addr(&server);
    assert_ne!(text_addr.port(), server.addr.port());

    // Enough text clients that both workers hold some.
    let mut texts: Vec<BufReader<TcpStream>> = (0..8)
        .map(|_| {
            let s = tcp_connect(text_addr, REPLY_TIMEOUT);
            s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
            BufReader::new(s)
        })
        .collect();
    let mut ws = connect_many(server.addr, "/", 4);
    // Every client is open once a broadcast from the last one reaches all.
    ws[3].send_text("ready");
    for t in texts.iter_mut() {
        let mut line = String::new();
        t.read_line(&mut line).expect("text client reads");
        assert_eq!(
            line, "ready\n",
            "a text client gets a WebSocket client's message as a line"
        );
    }
    for w in ws.iter_mut() {
        assert_eq!(w.recv_text(REPLY_TIMEOUT), "ready");
    }

    texts[0].get_mut().write_all(b"from text\n").expect("write");
    for w in ws.iter_mut() {
        assert_eq!(
            w.recv_text(REPLY_TIMEOUT),
            "from text",
            "a WebSocket client gets a text client's line as a message"
        );
    }
    for t in texts.iter_mut() {
        let mut line = String::new();
        t.read_line(&mut line).expect("text client reads");
        assert_eq!(line, "from text\n");
    }
}

#[test]
fn a_listener_on_a_taken_address_stops_start_up_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let toml = format!("[server]\nalso_listen = [\"text://{addr}\"]\n");
    let config = TempFile::new("toml", &toml);
    let out = run_to_exit(
        std::process::Command::new(example("broadcast")).args([
            "-c".as_ref(),
            config.path.as_os_str(),
            "--listen".as_ref(),
            "websocket://127.0.0.1:0".as_ref(),
        ]),
        REPLY_TIMEOUT,
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.status.success(), "started on a taken address: {text}");
    assert!(text.contains(&addr.to_string()), "{text}");
}
