//! Setting up the master's process: logging, the open-files limit, the
//! daemon and where its output goes, and the listening socket.

use super::WORKER_SLOT;
use crate::config::Config;
use crate::error::{Error, Result};
use nix::unistd::{fork, ForkResult};
use socket2::{Domain, Socket, Type};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;

/// How many threads this process has (Linux: /proc/self/status).
pub(super) fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
}

/// Sets up `env_logger` (unless the application set a logger) with lines
/// tagged `master` or `wN`. `RUST_LOG` filters; the default is `info`.
pub(super) fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, rec| {
            let slot = WORKER_SLOT.load(Ordering::Relaxed);
            let who = if slot < 0 {
                "master".to_string()
            } else {
                format!("w{slot}")
            };
            writeln!(
                buf,
                "{} {:<5} [{who}] {}",
                buf.timestamp_millis(),
                rec.level(),
                rec.args()
            )
        })
        .try_init();
}

/// Where the master's output goes once start-up has succeeded: stderr (and
/// so the log) to `log_file` if set; with `-d`, stdin and stdout to
/// `/dev/null`, and stderr too when there is no `log_file`. The files are
/// opened before anything is bound, so a bad path stops start-up with the
/// error on the terminal; until [`Output::settle`] nothing is redirected.
pub(super) struct Output {
    log: Option<File>,
    /// `/dev/null` when detaching.
    null: Option<File>,
}

impl Output {
    pub(super) fn open(cfg: &Config, daemon: bool) -> Result<Output> {
        let log = match &cfg.log_file {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::io("open log_file", e))?,
            ),
            None => None,
        };
        let null = match daemon {
            true => Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map_err(|e| Error::io("open /dev/null", e))?,
            ),
            false => None,
        };
        Ok(Output { log, null })
    }

    /// Detaches if asked (the parent exits 0: the caller has printed the
    /// listening line, and start-up is over), then redirects. The lock of
    /// the pid file, shared with the child, stays held by it.
    pub(super) fn settle(self) -> Result<()> {
        if let Some(null) = &self.null {
            // SAFETY: single-threaded (checked at start).
            match unsafe { fork() }? {
                ForkResult::Parent { .. } => std::process::exit(0),
                ForkResult::Child => {}
            }
            nix::unistd::setsid()?;
            nix::unistd::dup2_stdin(null)?;
            nix::unistd::dup2_stdout(null)?;
        }
        if let Some(to) = self.log.as_ref().or(self.null.as_ref()) {
            nix::unistd::dup2_stderr(to).map_err(|e| Error::io("redirect stderr", e))?;
        }
        Ok(())
    }
}

/// Raises the soft open-files limit to the hard one.
pub(super) fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

pub(super) fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_cloexec(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}
