//! [`AppServer`]: an example application (the chat, the sync server)
//! running as a child process with a directory of its own (config and
//! database), and the ways a test ends it: gracefully, by killing the
//! master alone, or by killing everything at once.

use super::{wait_gone, Server};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::time::Duration;

/// How long a stop or kill may take before what is left is SIGKILLed.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// A running application server and its directory. Stopped gracefully on
/// drop; the directory goes too unless `keep_dir`.
pub struct AppServer {
    /// The master process and its output.
    pub server: Server,
    /// The directory holding the config and the database.
    pub dir: PathBuf,
    /// Leave `dir` in place on drop (for a restart on the same database).
    pub keep_dir: bool,
    /// Worker pids seen so far, killed on drop if still alive.
    seen_workers: Vec<i32>,
}

impl AppServer {
    /// Takes charge of `server`, whose files are in `dir`.
    pub fn new(server: Server, dir: PathBuf) -> AppServer {
        AppServer {
            server,
            dir,
            keep_dir: false,
            seen_workers: Vec::new(),
        }
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        self.server.output()
    }

    /// The master's pid.
    pub fn master_pid(&self) -> i32 {
        self.server.pid()
    }

    /// The live children of the master (its workers).
    pub fn worker_pids(&mut self) -> Vec<i32> {
        let pids = self.server.workers();
        for p in &pids {
            if !self.seen_workers.contains(p) {
                self.seen_workers.push(*p);
            }
        }
        pids
    }

    /// SIGKILLs the master, then waits for its workers to go (they get
    /// SIGTERM when the master dies), killing them after a deadline.
    pub fn kill_master(&mut self) {
        let workers = self.worker_pids();
        if self.running() {
            self.server.signal(Signal::SIGKILL);
            self.server.wait_exit(STOP_WAIT);
        }
        wait_gone(&workers, STOP_WAIT);
    }

    /// SIGKILLs the master and its workers at once: nothing of it says
    /// goodbye.
    pub fn kill_all(&mut self) {
        self.server.kill_all();
        let seen = std::mem::take(&mut self.seen_workers);
        wait_gone(&seen, STOP_WAIT);
    }

    /// Stops the server gracefully (SIGTERM), killing what is left after a
    /// deadline.
    pub fn stop(&mut self) {
        if self.running() {
            self.server.signal(Signal::SIGTERM);
            if self.server.wait_exit(STOP_WAIT).is_none() {
                self.server.signal(Signal::SIGKILL);
                self.server.wait_exit(STOP_WAIT);
            }
        }
        let seen = std::mem::take(&mut self.seen_workers);
        wait_gone(&seen, STOP_WAIT);
    }

    /// Whether the master has not exited yet.
    pub fn running(&mut self) -> bool {
        self.server.wait_exit(Duration::ZERO).is_none()
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.stop();
        // On a panic, `Server`'s drop prints the end of the log.
        if std::thread::panicking() {
            eprintln!("server files: {}", self.dir.display());
        } else if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
