//! Setting up the master's process: logging, the open-files limit, the
//! daemon, and the listening socket.

use super::WORKER_SLOT;
use crate::error::{Error, Result};
use nix::unistd::{fork, ForkResult};
use socket2::{Domain, Socket, Type};
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

/// Appends stderr (and so the log) to a file.
pub(super) fn redirect_stderr(path: &str) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open log_file", e))?;
    nix::unistd::dup2_stderr(&f).map_err(|e| Error::io("redirect stderr", e))?;
    Ok(())
}

/// Becomes a daemon: the parent exits 0 (the caller has printed the listening
/// line), the child leaves the terminal's session and drops stdin/stdout.
pub(super) fn detach() -> Result<()> {
    // SAFETY: single-threaded (checked at start).
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    nix::unistd::setsid()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    Ok(())
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
