//! The chat page in a real browser: `scripts/setup-browser.sh` installs
//! Chromium and playwright-core when missing, then `tests/browser/chat.mjs`
//! has two people chat through the page of a two-worker server, then restarts
//! the server on the same port and checks that both pages reconnect.
//!
//! A second test does the same over `https://` and `wss://`.
//!
//! Under CI (`CI=true`) a setup failure fails the test; elsewhere (say, a
//! laptop without root) it is reported and the test returns early (see
//! `common::browser`).

mod chat_util;
mod common;

use chat_util::ChatServer;
use common::browser;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What tests/browser/chat.mjs expects of the server: ticks, 5 messages of
/// history on join, 200 characters per message.
const CONFIG: &str = "[chat]\ntick_interval_ms = 250\nhistory_on_join = 5\nmax_text_chars = 200\n";

/// The screenshots chat.mjs takes.
const SHOTS: [&str; 2] = ["chat-browser-alice.png", "chat-browser-bob.png"];

#[test]
fn two_browsers_chat_through_the_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser::ready(root) {
        return;
    }

    let mut server = Some(ChatServer::start("browser", 2, CONFIG));
    let shots = common::target_dir();
    for old in SHOTS {
        let _ = std::fs::remove_file(shots.join(old));
    }
    let url = server.as_ref().expect("server").http_url();
    let mut restarted = false;
    let status = browser::run_script(
        root,
        "chat.mjs",
        &[&url, shots.to_str().expect("utf-8 path"), "--restart"],
        Duration::from_secs(180),
        |line| {
            if line != "RESTART" {
                return None;
            }
            // Stop (clients see 1001) and start again on the same port and
            // database.
            let mut old = server.take().expect("server");
            let (dir, addr) = (old.dir.clone(), old.addr.clone());
            old.keep_dir = true;
            drop(old);
            let mut new = ChatServer::start_at(&dir, 2, CONFIG, &addr);
            new.keep_dir = false;
            server = Some(new);
            restarted = true;
            Some("restarted".into())
        },
    );
    assert!(status.success(), "tests/browser/chat.mjs failed: {status}");
    assert!(restarted, "the page script never asked for the restart");
    browser::assert_screenshots(&shots, &SHOTS);
}

/// The same page over `https://`, its socket over `wss://` (the script checks
/// the scheme of every socket the page opens), with a certificate made for
/// the test that the browsers are told to accept.
#[test]
fn two_browsers_chat_over_https_and_wss() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser::ready(root) {
        return;
    }
    let dir = chat_util::temp_dir("browser-tls");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("make a certificate");
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), made.key_pair.serialize_pem()).expect("write key");
    let config = dir.join("chat.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncount = 2\ntls_cert = {:?}\ntls_key = {:?}\n{CONFIG}",
            dir.join("cert.pem").display().to_string(),
            dir.join("key.pem").display().to_string()
        ),
    )
    .expect("write chat.toml");
    let config = config.to_str().expect("utf-8 path");
    let server = common::Server::start("chat", &["-c", config, "--listen", "127.0.0.1:0"]);
    server.wait_workers(2, chat_util::WAIT);
    let shots = common::target_dir().join("tls");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let url = format!("https://localhost:{}/", server.addr.port());
    let done = common::run_to_exit(
        Command::new("node")
            .arg(root.join("tests/browser/chat.mjs"))
            .arg(&url)
            .arg(&shots)
            .current_dir(root.join("tests/browser")),
        Duration::from_secs(180),
    );
    assert!(done.status.success(), "chat.mjs over {url}: {done:?}");
    browser::assert_screenshots(&shots, &SHOTS);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
