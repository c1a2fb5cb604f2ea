//! A foreman server under a bench: a child process in its own process
//! group (so that a stop reaches its forked workers too), started with its
//! stderr in a log file and its `listening on` line awaited, stopped with
//! SIGTERM and then SIGKILL to the group.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a SIGTERM may take before the group is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A started foreman server (master and its workers, one process group);
/// stopped on drop.
pub struct Proc {
    child: Option<Child>,
    /// The address of its `listening on` line.
    pub addr: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr to `log` and waits (bounded) for its
    /// `listening on SCHEME://ADDR` line on stdout.
    pub fn start(mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let stderr = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sent {
                    continue;
                }
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or("");
                    let hostport = url.split("://").nth(1).unwrap_or(url);
                    let _ = tx.send(hostport.parse::<SocketAddr>().ok());
                    sent = true;
                }
            }
            let _ = tx.send(None);
        });
        let mut p = Proc {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(addr)) => {
                p.addr = addr;
                Ok(p)
            }
            _ => Err(format!(
                "no `listening on` line within {START_TIMEOUT:?}; see {}",
                p.log.display()
            )),
        }
    }

    /// Whether the master has exited (and how).
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// SIGTERM to the master, then SIGKILL to its group if it is not gone
    /// within the grace period. Returns whether it stopped on SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = child.id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        let mut clean = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                clean = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The group is the master's own (process_group(0)): its workers,
        // should any outlive it.
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
        clean
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
