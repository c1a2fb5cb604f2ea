//! Browser tests: `scripts/setup-browser.sh` installs Chromium and
//! playwright-core when missing; a script under `tests/browser/` then drives
//! the page with Node and talks to the test over its stdout and stdin.
//!
//! Under CI (`CI=true`) a setup failure fails the test; elsewhere (say, a
//! laptop without root) it is reported and the test returns early.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Runs `scripts/setup-browser.sh` once per test process (it is idempotent).
/// `false`: skip the test (never under CI, where a failed setup panics).
pub fn ready(root: &Path) -> bool {
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

/// Runs `node tests/browser/SCRIPT ARGS...` to its end, printing what it
/// prints. Each line it prints is passed to `on_line`; an answer is written
/// back to its stdin as a line (how a script asks the test to restart the
/// server and learns that it is done). Panics after `timeout`.
#[track_caller]
pub fn run_script(
    root: &Path,
    script: &str,
    args: &[&str],
    timeout: Duration,
    mut on_line: impl FnMut(&str) -> Option<String>,
) -> ExitStatus {
    let dir = root.join("tests/browser");
    let mut node = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
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
    let deadline = Instant::now() + timeout;
    let mut open = true;
    loop {
        // Every line printed is answered before the exit is looked at.
        if open {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(answer) = on_line(&line) {
                        let stdin = node.stdin.as_mut().expect("node stdin");
                        stdin
                            .write_all(format!("{answer}\n").as_bytes())
                            .expect("answer node");
                        stdin.flush().expect("flush");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(status) = node.try_wait().expect("wait for node") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            panic!("tests/browser/{script} took longer than {timeout:?}");
        }
    }
}

/// Each of `names` is a real PNG image (the signature, more than a few
/// bytes) in `dir`.
#[track_caller]
pub fn assert_screenshots(dir: &Path, names: &[&str]) {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    for shot in names {
        let bytes = std::fs::read(dir.join(shot)).unwrap_or_default();
        assert!(
            bytes.len() > 1000,
            "screenshot {shot} missing under {}",
            dir.display()
        );
        assert!(
            bytes.starts_with(PNG),
            "screenshot {shot} under {} is not a PNG",
            dir.display()
        );
    }
}
