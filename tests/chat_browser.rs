//! The chat page in a real browser: `scripts/setup-browser.sh` installs
//! Chromium and playwright-core when missing, then `tests/browser/chat.mjs`
//! has two people chat through the page of a two-worker server, then restarts
//! the server on the same port and checks that both pages reconnect.
//!
//! Under CI (`CI=true`) a setup failure fails the test; elsewhere (say, a
//! laptop without root) it is reported and the test returns early.

mod chat_util;
mod common;

use chat_util::ChatServer;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn two_browsers_chat_through_the_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let setup = Command::new("bash")
        .arg(root.join("scripts/setup-browser.sh"))
        .current_dir(root)
        .status();
    if !setup.as_ref().is_ok_and(|s| s.success()) {
        assert!(!ci, "scripts/setup-browser.sh failed: {setup:?}");
        eprintln!(
            "SKIPPED: scripts/setup-browser.sh failed ({setup:?}); the browser test needs it"
        );
        return;
    }

    const CONFIG: &str =
        "[chat]\ntick_interval_ms = 250\nhistory_on_join = 5\nmax_text_chars = 200\n";
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
    for shot in ["chat-browser-alice.png", "chat-browser-bob.png"] {
        let len = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(
            len > 1000,
            "screenshot {shot} missing under {}",
            shots.display()
        );
    }
}
