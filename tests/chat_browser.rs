//! The chat page in a real browser: `scripts/setup-browser.sh` installs
//! Chromium and playwright-core when missing, then `tests/browser/chat.mjs`
//! has two people chat through the page of a two-worker server, then restarts
//! the server on the same port and checks that both pages reconnect.
//!
//! A second test does the same over `https://` and `wss://`.
//!
//! Under CI (`CI=true`) a setup failure fails the test; elsewhere (say, a
//! laptop without root) it is reported and the test returns early.

mod chat_util;
mod common;

use chat_util::ChatServer;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// What tests/browser/chat.mjs expects of the server: ticks, 5 messages of
/// history on join, 200 characters per message.
const CONFIG: &str = "[chat]\ntick_interval_ms = 250\nhistory_on_join = 5\nmax_text_chars = 200\n";

/// Runs `scripts/setup-browser.sh` (idempotent). `false`: skip the test
/// (never under CI, where a failed setup fails the test).
fn browser_ready(root: &Path) -> bool {
    static SETUP: Mutex<Option<bool>> = Mutex::new(None);
    let mut done = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ok) = *done {
        return ok;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let setup = Command::new("bash")
        .arg(root.join("scripts/setup-browser.sh"))
        .current_dir(root)
        .status();
    let ok = setup.as_ref().is_ok_and(|s| s.success());
    if !ok {
        assert!(!ci, "scripts/setup-browser.sh failed: {setup:?}");
        eprintln!(
            "SKIPPED: scripts/setup-browser.sh failed ({setup:?}); the browser test needs it"
        );
    }
    *done = Some(ok);
    ok
}

/// Screenshots `chat-browser-{alice,bob}.png` in `dir`, each a real image.
#[track_caller]
fn assert_screenshots(dir: &Path) {
    for shot in ["chat-browser-alice.png", "chat-browser-bob.png"] {
        let len = std::fs::metadata(dir.join(shot)).map_or(0, |m| m.len());
        assert!(
            len > 1000,
            "screenshot {shot} missing under {}",
            dir.display()
        );
    }
}

#[test]
fn two_browsers_chat_through_the_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser_ready(root) {
        return;
    }

    let mut server = ChatServer::start("browser", 2, CONFIG);
    let shots = common::target_dir();
    for old in ["chat-browser-alice.png", "chat-browser-bob.png"] {
        let _ = std::fs::remove_file(shots.join(old));
    }
    let mut node = Command::new("node")
        .arg(root.join("tests/browser/chat.mjs"))
        .arg(server.http_url())
        .arg(&shots)
        .arg("--restart")
        .current_dir(root.join("tests/browser"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node");
    let stdout = node.stdout.take().expect("node stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut restarted = false;
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for node") {
            break status;
        }
        if let Ok(line) = lines.try_recv() {
            if line == "RESTART" {
                // Stop (clients see 1001) and start again on the same port and
                // database.
                let (dir, addr) = (server.dir.clone(), server.addr.clone());
                server.keep_dir = true;
                drop(server);
                server = ChatServer::start_at(&dir, 2, CONFIG, &addr);
                server.keep_dir = false;
                let stdin = node.stdin.as_mut().expect("node stdin");
                stdin.write_all(b"restarted\n").expect("tell node");
                stdin.flush().expect("flush");
                restarted = true;
            }
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            panic!("tests/browser/chat.mjs took longer than 3 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "tests/browser/chat.mjs failed: {status}");
    assert!(restarted, "the page script never asked for the restart");
    assert_screenshots(&shots);
}

/// The same page over `https://`, its socket over `wss://` (the script checks
/// the scheme of every socket the page opens), with a certificate made for
/// the test that the browsers are told to accept.
#[test]
fn two_browsers_chat_over_https_and_wss() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser_ready(root) {
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
    assert_screenshots(&shots);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
