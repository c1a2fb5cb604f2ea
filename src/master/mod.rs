//! The master process: binds the listeners, forks the workers, supervises
//! them, and acts on signals. It never serves a client.
//!
//! Signals are blocked and read from a signalfd in the master's own loop, so
//! they only ever mark work for the loop to do (nginx's rule).

use crate::cli::{Args, Command};
use crate::cluster::bus;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::report;
use crate::signals::master_signals;
use crate::worker::{Setup, Worker};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use socket2::{Domain, Socket, Type};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The worker slot of this process, -1 in the master (for log lines).
static WORKER_SLOT: AtomicI32 = AtomicI32::new(-1);
/// A worker that dies sooner than this after start is respawned with backoff.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A server: a config and the command to carry out. See the crate docs.
pub struct Server {
    cfg: Config,
    command: Command,
    daemon: bool,
    reconfigure: Option<Reconfigure>,
}

/// Builds the config anew for `reload` (see [`Server::reload_config`]).
type Reconfigure = Box<dyn FnMut() -> Result<Config>>;

/// One worker slot as the master sees it.
struct Slot {
    pid: Option<Pid>,
    started: Instant,
    incarnation: u32,
    /// When to respawn an empty slot.
    respawn_at: Option<Instant>,
    backoff: Duration,
    listener: TcpListener,
    bus_listener: UnixListener,
}

/// How many threads this process has (Linux: /proc/self/status).
fn thread_count() -> usize {
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
fn init_logging() {
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
fn redirect_stderr(path: &str) -> Result<()> {
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
fn detach() -> Result<()> {
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
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
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

impl Server {
    /// A server that will `start` with this config.
    pub fn new(cfg: Config) -> Server {
        Server {
            cfg,
            command: Command::Start,
            daemon: false,
            reconfigure: None,
        }
    }

    /// How `reload` gets its config: the master calls `f` on every reload
    /// and the replacement workers run with what it returns. Without it (a
    /// server made by [`Server::new`]), a reload replaces the workers with
    /// the same config. [`Server::from_config_file`] and
    /// [`Server::with_args`] set it to read their file again.
    ///
    /// An error, a config that fails [`Config::validate`], or TLS files that
    /// do not load refuse the reload: it is logged and the running workers stay. Settings that need
    /// the listener or the process layout to change (listen address and
    /// protocol, `count`, `reuse_port`, `pid_file`, `log_file`) keep their
    /// running values, with a warning; those take a `restart`. An application
    /// with settings of its own re-reads them here too, and hands them to the
    /// workers through its handler factory, which runs after this.
    pub fn reload_config(mut self, f: impl FnMut() -> Result<Config> + 'static) -> Server {
        self.reconfigure = Some(Box::new(f));
        self
    }

    /// A server configured by the `[server]` table of a TOML file.
    pub fn from_config_file(path: impl AsRef<std::path::Path>) -> Result<Server> {
        let path = path.as_ref().to_path_buf();
        let server = Server::new(Config::load(&path)?);
        Ok(server.reload_config(move || Config::load(&path)))
    }

    /// A server configured by the process's command line (see [`crate::cli`]):
    /// the `-c` file, the flags, and the command. Returns the arguments the
    /// library did not recognise, for the application.
    pub fn from_args() -> Result<(Server, Vec<String>)> {
        let args = Args::from_env()?;
        Ok((Server::with_args(&args)?, args.rest))
    }

    /// A server as a parsed command line asks: the `-c` file (or defaults) with
    /// the flags applied, the command, and `-d`.
    pub fn with_args(args: &Args) -> Result<Server> {
        let again = args.clone();
        Ok(Server::new(args.config()?)
            .command(args.command)
            .daemon(args.daemon)
            .reload_config(move || again.config()))
    }

    /// Detach from the terminal after binding (`start -d`): the command
    /// returns once the server is listening, and the master lives on in the
    /// background (stop it with `stop`, which needs `pid_file`).
    pub fn daemon(mut self, daemon: bool) -> Server {
        self.daemon = daemon;
        self
    }

    /// Sets the command to carry out (default [`Command::Start`]).
    pub fn command(mut self, command: Command) -> Server {
        self.command = command;
        self
    }

    /// The config this server runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Carries out the command. For `start`: binds, prints
    /// `listening on URL` on stdout, forks `count` workers that each call
    /// `factory(worker_id)` once for their handler, supervises them until
    /// SIGINT or SIGTERM, stops gracefully, and returns `Ok(())`.
    ///
    /// # Errors
    ///
    /// [`Error::Threaded`] if the process already has other threads (fork would
    /// copy only this one), [`Error::Listen`] if the address cannot be bound,
    /// [`Error::Config`] for an invalid config.
    pub fn run<H, F>(self, factory: F) -> Result<()>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        self.cfg.validate()?;
        match self.command {
            Command::Start => Master::start(self.cfg, self.daemon, self.reconfigure, factory),
            Command::Stop => control::stop(&self.cfg),
            Command::Restart => {
                if control::running(&self.cfg)? {
                    control::stop(&self.cfg)?;
                }
                Master::start(self.cfg, self.daemon, self.reconfigure, factory)
            }
            Command::Reload => control::signal(&self.cfg, Signal::SIGUSR1, "reload"),
            Command::Status => control::status(&self.cfg),
            Command::Connections => control::connections(&self.cfg),
        }
    }
}

/// The running master.
struct Master<F> {
    cfg: Arc<Config>,
    factory: F,
    /// The master's pid (after `-d` detached it).
    pid: u32,
    /// Names the bus addresses: the pid at bind time.
    bus_id: u32,
    slots: Vec<Slot>,
    signals: SignalFd,
    stop_deadline: Option<Instant>,
    /// Slots still to be replaced by a reload, in order; the head is being replaced.
    reloading: Vec<usize>,
    /// The slot whose replacement must live [`QUICK_DEATH`] before a reload
    /// goes on to the next slot.
    probation: Option<usize>,
    /// A reload asked for while one was under way: it follows.
    reload_queued: bool,
    started: Instant,
    /// What it listens on, as printed at start.
    url: String,
    reconfigure: Option<Reconfigure>,
    /// TLS for the workers, loaded from the config's files.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl<F> Master<F> {
    fn start<H: Handler>(
        cfg: Config,
        daemon: bool,
        reconfigure: Option<Reconfigure>,
        factory: F,
    ) -> Result<()>
    where
        F: FnMut(usize) -> H,
    {
        let threads = thread_count();
        if threads > 1 {
            return Err(Error::Threaded { threads });
        }
        if let Some(path) = &cfg.log_file {
            redirect_stderr(path)?;
        }
        init_logging();
        raise_nofile();
        let tls = cfg.server_tls()?;
        let mut addr = cfg.socket_addr()?;
        let listen_err = |source| Error::Listen {
            addr: cfg.addr.clone(),
            source,
        };
        let first = bind(addr, cfg.reuse_port).map_err(listen_err)?;
        addr = first.local_addr().map_err(listen_err)?;
        let mut listeners = vec![first];
        while cfg.reuse_port && listeners.len() < cfg.count {
            listeners.push(bind(addr, true).map_err(listen_err)?);
        }
        let bus_id = std::process::id();
        let mut slots = Vec::with_capacity(cfg.count);
        for slot in 0..cfg.count {
            let listener = match listeners.get(slot) {
                Some(l) if cfg.reuse_port => l.try_clone(),
                _ => listeners[0].try_clone(),
            }
            .map_err(|e| Error::io("dup listener", e))?;
            let bus_addr = bus::address(bus_id, slot).map_err(|e| Error::io("bus address", e))?;
            let bus_listener =
                UnixListener::bind_addr(&bus_addr).map_err(|e| Error::io("bind bus socket", e))?;
            slots.push(Slot {
                pid: None,
                started: Instant::now(),
                incarnation: 0,
                respawn_at: None,
                backoff: Duration::ZERO,
                listener,
                bus_listener,
            });
        }
        drop(listeners);
        let url = format!("{}://{}", cfg.protocol.scheme(), addr);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {url}");
        let _ = out.flush();
        drop(out);
        if daemon {
            detach()?;
        }
        log::info!(
            "{}: {url}, {} workers, reuse_port={}, tls={}",
            cfg.name,
            cfg.count,
            cfg.reuse_port,
            tls.is_some()
        );
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&master_signals()), None)?;
        let signals = SignalFd::with_flags(
            &master_signals(),
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )?;
        let pid = std::process::id();
        if let Some(p) = &cfg.pid_file {
            std::fs::write(p, format!("{pid}\n")).map_err(|e| Error::io("write pid_file", e))?;
        }
        if let Some(dir) = report::dir(&cfg) {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                log::warn!(
                    "{}: {e}; status and connections cannot answer",
                    dir.display()
                );
            }
        }
        let mut master = Master {
            cfg: Arc::new(cfg),
            factory,
            pid,
            bus_id,
            slots,
            signals,
            stop_deadline: None,
            reloading: Vec::new(),
            probation: None,
            reload_queued: false,
            started: Instant::now(),
            url,
            reconfigure,
            tls,
        };
        for slot in 0..master.slots.len() {
            master.spawn(slot);
        }
        let r = master.supervise();
        if let Some(p) = &master.cfg.pid_file {
            let _ = std::fs::remove_file(p);
        }
        if let Some(dir) = report::dir(&master.cfg) {
            let _ = std::fs::remove_dir_all(dir);
        }
        r
    }

    fn spawn<H: Handler>(&mut self, slot: usize)
    where
        F: FnMut(usize) -> H,
    {
        let s = &mut self.slots[slot];
        s.incarnation += 1;
        s.respawn_at = None;
        // SAFETY: the master is single-threaded (checked at start), so the child
        // gets a consistent copy of its memory.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                s.pid = Some(child);
                s.started = Instant::now();
                log::info!("worker {slot} started (pid {child})");
            }
            Ok(ForkResult::Child) => {
                let code = self.child(slot);
                std::process::exit(code);
            }
            Err(e) => {
                log::error!("fork for worker {slot}: {e}; retrying");
                s.respawn_at = Some(Instant::now() + FIRST_BACKOFF);
            }
        }
    }

    /// Runs in the forked child: becomes worker `slot`; returns its exit code.
    fn child<H: Handler>(&mut self, slot: usize) -> i32
    where
        F: FnMut(usize) -> H,
    {
        WORKER_SLOT.store(slot as i32, Ordering::Relaxed);
        // Die with the master: a worker must not outlive its supervisor.
        // SAFETY: prctl(PR_SET_PDEATHSIG) has no memory effects.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        if nix::unistd::getppid().as_raw() as u32 != self.pid {
            return 0;
        }
        let mut unblock = SigSet::empty();
        for sig in [Signal::SIGCHLD, Signal::SIGHUP] {
            unblock.add(sig);
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&unblock), None);
        // Other slots' sockets stay with the master.
        for (i, other) in self.slots.iter().enumerate() {
            if i != slot {
                // SAFETY: these fds belong to the master's copy of the slot
                // table, which this process never uses again (it exits).
                unsafe {
                    libc::close(other.bus_listener.as_raw_fd());
                    if self.cfg.reuse_port {
                        libc::close(other.listener.as_raw_fd());
                    }
                }
            }
        }
        // SAFETY: as above, the master's signalfd is not used in the child.
        unsafe { libc::close(self.signals.as_fd().as_raw_fd()) };
        let s = &self.slots[slot];
        let setup = match (s.listener.try_clone(), s.bus_listener.try_clone()) {
            (Ok(listener), Ok(bus_listener)) => Setup {
                cfg: self.cfg.clone(),
                tls: self.tls.clone(),
                slot: slot as u16,
                incarnation: s.incarnation,
                bus_id: self.bus_id,
                listener,
                bus_listener,
            },
            (Err(e), _) | (_, Err(e)) => {
                log::error!("worker {slot}: {e}");
                return 1;
            }
        };
        let factory = &mut self.factory;
        let r = catch_unwind(AssertUnwindSafe(|| {
            Worker::new(setup, factory).and_then(Worker::run)
        }));
        match r {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                log::error!("worker {slot} failed: {e}");
                1
            }
            Err(_) => {
                log::error!("worker {slot} panicked outside a callback");
                2
            }
        }
    }

    fn supervise<H: Handler>(&mut self) -> Result<()>
    where
        F: FnMut(usize) -> H,
    {
        loop {
            let now = Instant::now();
            let next = self
                .slots
                .iter()
                .filter_map(|s| s.respawn_at)
                .chain(self.stop_deadline)
                .chain(self.probation_ends())
                .min();
            let timeout = match next {
                None => PollTimeout::NONE,
                Some(t) => {
                    let ms = t.saturating_duration_since(now).as_millis() as u64 + 1;
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            while let Ok(Some(info)) = self.signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {}
                    Ok(Signal::SIGUSR1) => self.begin_reload(),
                    Ok(sig @ (Signal::SIGUSR2 | Signal::SIGIO)) if report::is_request(&info) => {
                        self.answer(sig)
                    }
                    Ok(Signal::SIGHUP | Signal::SIGUSR2) => self.log_status(),
                    Ok(Signal::SIGIO) => {}
                    Ok(sig) => {
                        log::info!("{sig}: stopping");
                        self.begin_stop();
                    }
                    Err(_) => {}
                }
            }
            self.reap();
            let now = Instant::now();
            if self.stop_deadline.is_some() {
                if self.slots.iter().all(|s| s.pid.is_none()) {
                    log::info!("all workers stopped");
                    return Ok(());
                }
                if self.stop_deadline.is_some_and(|d| d <= now) {
                    self.kill_all();
                    return Ok(());
                }
                continue;
            }
            for slot in 0..self.slots.len() {
                if self.slots[slot].respawn_at.is_some_and(|t| t <= now) {
                    self.spawn(slot);
                }
            }
            if self.probation_ends().is_some_and(|t| t <= now) {
                self.probation = None;
                self.next_reload();
                if self.reloading.is_empty() {
                    log::info!("reload done");
                }
            }
            if self.reload_queued && self.reloading.is_empty() && self.probation.is_none() {
                self.reload_queued = false;
                self.begin_reload();
            }
        }
    }

    /// When the replacement on probation has lived long enough.
    fn probation_ends(&self) -> Option<Instant> {
        let s = &self.slots[self.probation?];
        s.pid.map(|_| s.started + QUICK_DEATH)
    }

    /// Collects exited workers and schedules their replacements.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let Some(pid) = status.pid() else { continue };
            let Some(slot) = self.slots.iter().position(|s| s.pid == Some(pid)) else {
                continue;
            };
            let s = &mut self.slots[slot];
            s.pid = None;
            if self.stop_deadline.is_some() {
                log::info!("worker {slot} (pid {pid}) exited: {status:?}");
                continue;
            }
            let reloaded = self.reloading.first() == Some(&slot);
            let lived = s.started.elapsed();
            if self.probation == Some(slot) && lived < QUICK_DEATH {
                // The new code or config does not come up: keep the workers
                // that still run the old one.
                log::error!(
                    "reload stopped: the new worker {slot} (pid {pid}) died {lived:?} after \
                     start ({status:?}); {} worker(s) keep running as before",
                    self.reloading.len()
                );
                self.probation = None;
                self.reloading.clear();
            }
            if reloaded {
                s.backoff = Duration::ZERO;
            } else if lived < QUICK_DEATH {
                s.backoff = (s.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                log::error!(
                    "worker {slot} (pid {pid}) died {lived:?} after start: {status:?}; respawning in {:?}",
                    s.backoff
                );
            } else {
                s.backoff = Duration::ZERO;
                log::error!("worker {slot} (pid {pid}) died: {status:?}; respawning");
            }
            s.respawn_at = Some(Instant::now() + s.backoff);
            if reloaded {
                // Its replacement starts now; the next slot waits until it
                // has lived QUICK_DEATH.
                self.reloading.remove(0);
                self.probation = Some(slot);
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.stop_deadline = Some(Instant::now() + self.cfg.stop_timeout);
        for s in &mut self.slots {
            s.respawn_at = None;
            if let Some(pid) = s.pid {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
    }

    fn kill_all(&mut self) {
        for (slot, s) in self.slots.iter_mut().enumerate() {
            if let Some(pid) = s.pid.take() {
                log::warn!("worker {slot} (pid {pid}) did not stop in time: killing it");
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
        }
    }

    /// Replaces the workers one at a time: each is stopped gracefully and its
    /// replacement forked as soon as it has exited, so the listener (held by the
    /// master) never stops accepting. The next slot's turn comes once that
    /// replacement has lived [`QUICK_DEATH`]; if it dies sooner, the reload
    /// stops and the other workers keep running as they were.
    fn begin_reload(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        if !self.reloading.is_empty() || self.probation.is_some() {
            log::info!("reload asked for during a reload: it follows when this one is done");
            self.reload_queued = true;
            return;
        }
        if let Some(reconfigure) = self.reconfigure.as_mut() {
            let new = reconfigure().and_then(|c| {
                c.validate()?;
                let tls = c.server_tls()?;
                Ok((c, tls))
            });
            match new {
                Ok((new, tls)) => {
                    self.cfg = Arc::new(keep_fixed(&self.cfg, new));
                    self.tls = tls;
                }
                Err(e) => {
                    log::error!("reload refused, the workers keep running: {e}");
                    return;
                }
            }
        }
        log::info!(
            "reload: replacing {} workers one at a time",
            self.slots.len()
        );
        self.reloading = (0..self.slots.len()).collect();
        self.next_reload();
    }

    fn next_reload(&mut self) {
        while let Some(&slot) = self.reloading.first() {
            match self.slots[slot].pid {
                Some(pid) => {
                    let _ = kill(pid, Signal::SIGTERM);
                    return;
                }
                None => {
                    self.reloading.remove(0);
                }
            }
        }
    }

    /// Answers `status` or `connections` commands (see [`crate::report`]):
    /// writes the master's view for each waiting request and passes the
    /// signal on to every worker.
    fn answer(&self, sig: Signal) {
        let now = Instant::now();
        let workers = self
            .slots
            .iter()
            .enumerate()
            .map(|(slot, s)| report::SlotReport {
                slot,
                pid: s.pid.map(|p| p.as_raw()),
                incarnation: s.incarnation,
                up_ms: now.saturating_duration_since(s.started).as_millis() as u64,
            })
            .collect();
        let master = report::MasterReport {
            pid: self.pid,
            name: self.cfg.name.clone(),
            listen: self.url.clone(),
            up_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            workers,
        };
        // The workers first: the command reads the master's answer, then waits
        // for theirs.
        for s in &self.slots {
            if let Some(pid) = s.pid {
                if let Err(e) = report::queue_signal(pid, sig) {
                    log::warn!("cannot ask worker {pid}: {e}");
                }
            }
        }
        for token in report::waiting(&self.cfg, None, "master") {
            report::answer(&self.cfg, "master", token, &master);
        }
    }

    /// Logs the master's view and asks every worker to log its own.
    fn log_status(&self) {
        for (slot, s) in self.slots.iter().enumerate() {
            if let Some(pid) = s.pid {
                let _ = kill(pid, Signal::SIGUSR2);
            }
            log::info!(
                "status: worker {slot} pid {:?} incarnation {} up {:?}",
                s.pid.map(|p| p.as_raw()),
                s.incarnation,
                s.started.elapsed()
            );
        }
    }
}

/// `new` with the settings a reload cannot change taken from `running`, and
/// a warning for each that differs.
fn keep_fixed(running: &Config, mut new: Config) -> Config {
    let keep = |what: &str, differs: bool| {
        if differs {
            log::warn!("reload: {what} changed in the config; it takes a restart, keeping the running value");
        }
    };
    keep(
        "listen",
        new.protocol != running.protocol || new.addr != running.addr,
    );
    keep("count", new.count != running.count);
    keep("reuse_port", new.reuse_port != running.reuse_port);
    keep("pid_file", new.pid_file != running.pid_file);
    keep("log_file", new.log_file != running.log_file);
    new.protocol = running.protocol;
    new.addr = running.addr.clone();
    new.count = running.count;
    new.reuse_port = running.reuse_port;
    new.pid_file = running.pid_file.clone();
    new.log_file = running.log_file.clone();
    new
}

/// Commands that talk to a running master through its pid file.
mod control;
