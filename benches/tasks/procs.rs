//! The processes under test: the scheduler (`examples/tasks`) and its
//! executors (`examples/task_worker`), each started in its own process
//! group so that a stop reaches its forked workers too
//! ([`Proc`], benches/common/proc.rs).

pub use crate::proc::Proc;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts the scheduler with the config at `toml`.
pub fn scheduler(examples: &Path, toml: &Path, log: PathBuf) -> Result<Proc, String> {
    let bin = examples.join("tasks");
    if !bin.exists() {
        return Err(format!("{} not built", bin.display()));
    }
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(toml);
    Proc::start(cmd, log)
}

/// Starts one executor of `queue` with `capacity` slots. Its per-job log
/// lines are turned off (`RUST_LOG=warn`): they would cost the machine more
/// than the jobs.
pub fn executor(
    examples: &Path,
    scheduler: SocketAddr,
    queue: &str,
    capacity: usize,
    name: &str,
    log: PathBuf,
) -> Result<Proc, String> {
    let bin = examples.join("task_worker");
    if !bin.exists() {
        return Err(format!("{} not built", bin.display()));
    }
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn")
        .args(["--scheduler", &scheduler.to_string()])
        .args(["--queues", queue, "--name", name])
        .args(["--capacity", &capacity.to_string()]);
    Proc::start(cmd, log)
}

/// Waits until the executor's own listener says its scheduler is up (its
/// `hello` answered by `welcome`).
pub fn wait_executor_up(p: &mut Proc, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(how) = p.exited() {
            return Err(format!("executor exited ({how}); see {}", p.log.display()));
        }
        if let Ok(line) = state_line(p.addr) {
            let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
            if v["schedulers"][0]["up"] == true {
                return Ok(());
            }
            last = line;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "executor at {} not connected within {timeout:?}; its last state: {last}",
        p.addr
    ))
}

/// The one JSON line an executor's listener sends to each connection.
fn state_line(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
