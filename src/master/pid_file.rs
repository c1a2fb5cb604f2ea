//! The pid file as a lock: the master holds `flock(LOCK_EX)` on it for its
//! whole life, and only the holder of that lock is ever signalled or asked.
//!
//! - **Taking it** ([`PidLock::take`]) happens before anything is bound, so a
//!   second `start` on the same file names the holder and exits without
//!   touching the first server's sockets or files. The file stays empty
//!   until the master writes its pid ([`PidLock::write_pid`]), which it does
//!   once it is the final process (after `-d` detached) with its signals
//!   blocked.
//! - **Across fork** the lock belongs to the open file, which every child
//!   shares. The daemon's fork keeps it that way on purpose: the detached
//!   child goes on holding it when the parent exits. A worker drops its
//!   reference at once ([`release_in_worker`]), so the lock dies with the
//!   master even when killed workers outlive it for their stop. The file is
//!   close-on-exec, so no program a process runs inherits it.
//! - **Removing it** is the holder's alone, while it still holds the lock and
//!   only if the path still names its file ([`Drop`] of [`PidLock`]). A
//!   starter that locked a file the old holder removed meanwhile notices
//!   (the path names another inode) and opens the path again.
//! - **Finding the master** ([`holder`]) for `stop`, `reload`, `status` and
//!   `connections`: the lock must be held (a file whose lock nobody holds is
//!   stale), and the process the file names must have the file open. Signals
//!   go through a pidfd opened before that check, so a pid reused since
//!   cannot receive them.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The fd of the lock this process holds, -1 if none: what a freshly forked
/// worker closes.
static HELD_FD: AtomicI32 = AtomicI32::new(-1);

/// The master's hold on its pid file; dropping it removes the file and
/// releases the lock.
pub(super) struct PidLock {
    file: Flock<File>,
    path: PathBuf,
}

impl PidLock {
    /// Takes the lock on `path` (creating the file), or fails with
    /// [`Error::Running`] naming the holder.
    pub(super) fn take(path: &str) -> Result<PidLock> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::io("open pid_file", e))?;
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => f,
                Err((mut file, Errno::EWOULDBLOCK)) => {
                    return Err(match read_pid(&mut file) {
                        Some(pid) => Error::Running {
                            pid: pid.as_raw(),
                            pid_file: path.into(),
                        },
                        None => Error::Usage(format!(
                            "pid file {path} is locked by another process (a server starting?)"
                        )),
                    })
                }
                Err((_, e)) => return Err(Error::io("lock pid_file", e)),
            };
            if names(path, &file) {
                file.set_len(0)
                    .map_err(|e| Error::io("truncate pid_file", e))?;
                HELD_FD.store(file.as_raw_fd(), Ordering::Relaxed);
                return Ok(PidLock {
                    file,
                    path: path.into(),
                });
            }
        }
    }

    /// Writes `pid` (this process's, the master's) into the file.
    pub(super) fn write_pid(&mut self, pid: u32) -> Result<()> {
        let f: &mut File = &mut self.file;
        f.set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| f.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|e| Error::io("write pid_file", e))
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        if names(&self.path, &self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
        HELD_FD.store(-1, Ordering::Relaxed);
    }
}

/// In a freshly forked worker: closes this process's reference to the
/// master's pid lock, so the lock is released when the master ends.
pub(super) fn release_in_worker() {
    let fd = HELD_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the fd is the master's `PidLock`, which this process never
        // drops or uses (a worker exits without returning to the master's
        // code), so closing it here double-closes nothing.
        unsafe { libc::close(fd) };
    }
}

/// Whether `path` still names the file open as `file`.
fn names(path: impl AsRef<Path>, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
        _ => false,
    }
}

/// The pid a pid file holds, if it holds one.
fn read_pid(file: &mut File) -> Option<Pid> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    (pid > 0).then(|| Pid::from_raw(pid))
}

/// The running master: the process that holds the lock of its pid file,
/// reached through a pidfd.
pub(super) struct Holder {
    /// Its pid.
    pub(super) pid: Pid,
    /// A pidfd for it: signals through it cannot reach a later process that
    /// reused the pid.
    pidfd: OwnedFd,
}

/// The master holding the lock of the pid file at `path`; an error that says
/// why there is none ([`Error::NotRunning`]) otherwise.
pub(super) fn holder(path: &str) -> Result<Holder> {
    let not_running = |why: String| Error::NotRunning(format!("{why}; nothing signalled"));
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotRunning(format!("no pid file {path}")))
        }
        Err(e) => return Err(Error::io("open pid_file", e)),
    };
    let pid = read_pid(&mut file);
    // A shared lock is granted only if nobody holds the exclusive one; it is
    // given back at once when `probe` drops.
    let probe = file
        .try_clone()
        .map_err(|e| Error::io("open pid_file", e))?;
    match Flock::lock(probe, FlockArg::LockSharedNonblock) {
        Ok(probe) => {
            drop(probe);
            let named = pid.map_or(String::new(), |p| format!(", naming pid {p}"));
            return Err(not_running(format!(
                "stale pid file {path}{named}: nobody holds its lock"
            )));
        }
        Err((_, Errno::EWOULDBLOCK)) => {}
        Err((_, e)) => return Err(Error::io("probe the pid_file lock", e)),
    }
    let pid = pid.ok_or_else(|| {
        not_running(format!(
            "pid file {path} is locked but holds no pid yet (a server starting?)"
        ))
    })?;
    let pidfd = pidfd_open(pid).map_err(|_| {
        not_running(format!(
            "pid file {path} names pid {pid}, which is gone (its workers still stopping?)"
        ))
    })?;
    if !has_open(pid, &file) {
        return Err(not_running(format!(
            "pid file {path} names pid {pid}, which does not hold its lock"
        )));
    }
    Ok(Holder { pid, pidfd })
}

impl Holder {
    /// Sends `sig` to the master.
    pub(super) fn signal(&self, sig: Signal) -> Result<()> {
        // SAFETY: pidfd_send_signal reads only its arguments; a null info is
        // allowed (the kernel fills it in as kill would).
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if r < 0 {
            return Err(Error::io(
                "signal the master",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Waits until the master has exited, at most `timeout`; whether it did.
    pub(super) fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(n) if n > 0 => return true,
                Ok(_) if left.is_zero() => return false,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }
}

/// A pidfd for `pid` (close-on-exec).
fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether process `pid` has `file` open (any fd naming the same inode).
fn has_open(pid: Pid, file: &File) -> bool {
    let Ok(want) = file.metadata() else {
        return false;
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> String {
        let p = std::env::temp_dir().join(format!("foreman-pidlock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn a_second_lock_names_the_first_holder_and_the_holder_is_found() {
        let path = temp("second");
        let mut first = PidLock::take(&path).unwrap();
        first.write_pid(std::process::id()).unwrap();
        match PidLock::take(&path) {
            Err(Error::Running { pid, .. }) => assert_eq!(pid as u32, std::process::id()),
            Err(e) => panic!("expected Running: {e}"),
            Ok(_) => panic!("a second lock on {path}"),
        }
        let h = holder(&path).unwrap();
        assert_eq!(h.pid.as_raw() as u32, std::process::id());
        drop(first);
        assert!(!Path::new(&path).exists(), "the holder removes its file");
        assert!(matches!(holder(&path), Err(Error::NotRunning(_))));
    }

    #[test]
    fn an_unlocked_file_is_stale_and_a_lock_after_it_takes_over() {
        let path = temp("stale");
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        let e = holder(&path).err().expect("stale");
        assert!(e.to_string().contains("stale"), "{e}");
        let lock = PidLock::take(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "emptied");
        drop(lock);
    }

    #[test]
    fn the_holder_leaves_a_file_that_is_no_longer_its_own() {
        let path = temp("replaced");
        let lock = PidLock::take(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's\n").unwrap();
        drop(lock);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's\n");
        let _ = std::fs::remove_file(&path);
    }
}
