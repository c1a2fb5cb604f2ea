//! The command line, run as a user runs it: the pid file is a lock (a second
//! `start` refuses and names the holder; `stop` and the other commands
//! signal nobody when the file is stale or names a process that does not
//! hold it), `start -d` leaves nothing on the starting terminal, and the
//! parser: `--help` for the program and for a command, flags before or after
//! the command, `--version`, and exit code 2 with the usage for an unknown
//! flag.

mod common;

use common::*;
use nix::fcntl::{Flock, FlockArg};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// A temp dir holding a config that names a pid file (and, if asked, a log
/// file) in the same dir; removed on drop.
struct Files {
    dir: PathBuf,
    config: PathBuf,
    pid_file: PathBuf,
    log_file: Option<PathBuf>,
}

impl Files {
    fn new(name: &str, with_log: bool) -> Files {
        let dir = std::env::temp_dir().join(format!("foreman-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        let pid_file = dir.join("server.pid");
        let log_file = with_log.then(|| dir.join("server.log"));
        let mut toml = format!("[server]\npid_file = {:?}\n", path_str(&pid_file));
        if let Some(log) = &log_file {
            toml += &format!("log_file = {:?}\n", path_str(log));
        }
        let config = dir.join("server.toml");
        std::fs::write(&config, toml).expect("write the config");
        Files {
            dir,
            config,
            pid_file,
            log_file,
        }
    }

    fn config(&self) -> &str {
        path_str(&self.config)
    }

    /// Runs `echo ARGS... -c CONFIG` to its end.
    #[track_caller]
    fn echo(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new(example("echo"));
        cmd.args(args).arg("-c").arg(&self.config);
        run_to_exit(&mut cmd, Duration::from_secs(20))
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs `NAME ARGS...` (no config) to its end.
#[track_caller]
fn run(name: &str, args: &[&str]) -> Finished {
    run_to_exit(
        Command::new(example(name)).args(args),
        Duration::from_secs(20),
    )
}

/// A `sleep` of the test's own, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        // Longer than any test: it must not end by itself.
        Sleeper(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it still runs (it is our child: a signal would have ended it).
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where fd `fd` of process `pid` points.
fn fd_target(pid: i32, fd: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap_or_else(|e| panic!("fd {fd} of {pid}: {e}"))
}

#[test]
fn a_second_start_on_the_same_pid_file_refuses_naming_the_holder() {
    let files = Files::new("second", false);
    let first = Server::start(
        "echo",
        &["-c", files.config(), "--listen", "websocket://127.0.0.1:0"],
    );
    let master = first.pid();
    wait_until(REPLY_TIMEOUT, "the pid file names the master", || {
        files.pid() == Some(master)
    });

    let second = files.echo(&["start", "--listen", "websocket://127.0.0.1:0"]);
    assert!(!second.status.success(), "a second start: {second:?}");
    let holder = format!(
        "already running as pid {master} (pid file {})",
        files.pid_file.display()
    );
    assert!(second.stderr.contains(&holder), "{holder:?}: {second:?}");
    assert!(
        !second.stdout.contains("listening on"),
        "it binds nothing: {second:?}"
    );

    assert_eq!(files.pid(), Some(master), "the file still names the first");
    let status = files.echo(&["status"]);
    assert!(status.status.success(), "status: {status:?}");
    assert!(
        status.stdout.contains(&format!("master {master}")),
        "the first server answers: {status:?}"
    );
}

#[test]
fn a_pid_file_naming_a_process_that_does_not_hold_its_lock_gets_nobody_signalled() {
    let files = Files::new("stale", false);
    example("echo"); // built before the clock of the sleep starts
    let mut sleeper = Sleeper::spawn();
    std::fs::write(&files.pid_file, format!("{}\n", sleeper.pid())).expect("write the pid");

    // Nobody holds the lock: the file is stale.
    for command in ["stop", "reload", "status", "connections"] {
        let done = files.echo(&[command]);
        assert!(!done.status.success(), "{command}: {done:?}");
        assert!(
            done.stderr.contains("stale") && done.stderr.contains("nothing signalled"),
            "{command} says the file is stale: {done:?}"
        );
        assert!(sleeper.alive(), "{command} signalled the sleep process");
    }

    // Someone holds the lock, but not the process the file names.
    let file = std::fs::File::open(&files.pid_file).expect("open the pid file");
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).expect("lock the pid file");
    let done = files.echo(&["stop"]);
    assert!(!done.status.success(), "stop: {done:?}");
    assert!(
        done.stderr.contains("does not hold its lock"),
        "stop says why: {done:?}"
    );
    assert!(sleeper.alive(), "stop signalled the sleep process");
    drop(lock);
    assert!(files.pid_file.exists(), "only its holder removes the file");
}

#[test]
fn start_d_writes_nothing_to_the_terminal_and_the_daemon_holds_the_lock() {
    for with_log in [true, false] {
        let files = Files::new(if with_log { "daemon-log" } else { "daemon" }, with_log);
        let done = files.echo(&[
            "start",
            "-d",
            "--listen",
            "websocket://127.0.0.1:0",
            "--count",
            "2",
        ]);
        assert!(done.status.success(), "start -d: {done:?}");
        let url = done
            .stdout
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no listening line: {done:?}"))
            .to_string();
        assert!(
            !url.contains('\n') && done.stderr.is_empty(),
            "start -d prints its listening line and nothing else: {done:?}"
        );
        let addr: std::net::SocketAddr = url
            .trim_start_matches("websocket://")
            .parse()
            .unwrap_or_else(|e| panic!("{url}: {e}"));

        let master = poll_until(REPLY_TIMEOUT, "the daemon's pid file", || files.pid());
        let _tree = ProcessTree(master);
        let workers = poll_until(REPLY_TIMEOUT, "two daemon workers", || {
            let w: Vec<i32> = children(master)
                .into_iter()
                .filter(|&p| is_alive(p))
                .collect();
            (w.len() == 2).then_some(w)
        });
        // No process of the daemon writes to the terminal that started it.
        let log_target = files
            .log_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/null"));
        for &p in std::iter::once(&master).chain(&workers) {
            assert_eq!(fd_target(p, 0), Path::new("/dev/null"), "stdin of {p}");
            assert_eq!(fd_target(p, 1), Path::new("/dev/null"), "stdout of {p}");
            assert_eq!(fd_target(p, 2), log_target, "stderr of {p}");
        }

        let mut clients = connect_many(addr, "/", 4);
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_text(&format!("daemon {i}"));
            assert_eq!(c.recv_text(REPLY_TIMEOUT), format!("daemon {i}"));
        }
        // The lock's holder is the detached master, not the process we ran.
        let again = files.echo(&["start", "--listen", "websocket://127.0.0.1:0"]);
        assert!(
            !again.status.success() && again.stderr.contains(&format!("pid {master} ")),
            "a second start names the daemon: {again:?}"
        );

        let stopped = files.echo(&["stop"]);
        assert!(stopped.status.success(), "stop: {stopped:?}");
        assert!(!is_alive(master), "the daemon master is gone");
        assert!(!files.pid_file.exists(), "the pid file is removed");
        assert_eq!(clients[0].recv(REPLY_TIMEOUT), Recv::Close(Some(1001)));
        if let Some(log) = &files.log_file {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                log.contains("worker 1 started") && log.contains("all workers stopped"),
                "the daemon logs to log_file: {log:?}"
            );
        }
    }
}

#[test]
fn help_for_the_program_and_for_a_command() {
    for (name, own) in [
        ("echo", &["--text", "--turn-away"][..]),
        ("chat", &["token"]),
    ] {
        for flag in ["--help", "-h"] {
            let help = run(name, &[flag]);
            assert!(help.status.success(), "{name} {flag}: {help:?}");
            let usage = format!("Usage: {name} [OPTIONS] [COMMAND]");
            let commands = [
                "start",
                "stop",
                "restart",
                "reload",
                "status",
                "connections",
            ];
            let flags = ["-c, --config <FILE>", "--listen <URL>", "--count <N>"];
            for word in [&usage[..], "--reuse-port"]
                .into_iter()
                .chain(commands)
                .chain(flags)
                .chain(own.iter().copied())
            {
                assert!(
                    help.stdout.contains(word),
                    "{name} {flag}: {word:?}: {help:?}"
                );
            }
        }
    }
    let stop = run("echo", &["stop", "--help"]);
    assert!(stop.status.success(), "stop --help: {stop:?}");
    assert!(
        stop.stdout.contains("Usage: echo stop [OPTIONS]")
            && stop.stdout.contains("-g, --graceful")
            && stop.stdout.contains("--config")
            && !stop.stdout.contains("--daemon"),
        "stop's own help: {stop:?}"
    );
    let start = run("echo", &["help", "start"]);
    assert!(
        start.status.success() && start.stdout.contains("-d, --daemon"),
        "help start: {start:?}"
    );
}

#[test]
fn count_before_or_after_the_command_starts_that_many_workers() {
    let listen = "websocket://127.0.0.1:0";
    for args in [
        ["--count", "2", "start", "--listen", listen],
        ["start", "--listen", listen, "--count", "2"],
    ] {
        let server = Server::start("echo", &args);
        server.wait_workers(2, REPLY_TIMEOUT);
        let mut ws = Ws::connect(server.addr, "/");
        ws.send_text("hi");
        assert_eq!(ws.recv_text(REPLY_TIMEOUT), "hi", "{args:?}");
    }
}

#[test]
fn version_names_the_program() {
    for (name, flag) in [("echo", "--version"), ("echo", "-V"), ("chat", "--version")] {
        let done = run(name, &[flag]);
        assert!(done.status.success(), "{name} {flag}: {done:?}");
        assert_eq!(
            done.stdout,
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name} {flag}"
        );
    }
}

#[test]
fn an_unknown_flag_or_command_exits_2_with_the_usage() {
    // (program, arguments, what the message names, whether it shows the usage)
    for (name, args, named, usage) in [
        ("echo", &["--bogus"][..], "'--bogus'", true),
        ("echo", &["stop", "--bogus"], "'--bogus'", true),
        ("echo", &["stop", "-d"], "'-d'", true),
        ("echo", &["launch"], "'launch'", true),
        ("chat", &["--bogus"], "'--bogus'", true),
        (
            "echo",
            &["--count", "many"],
            "'many' for '--count <N>'",
            false,
        ),
    ] {
        let done = run(name, args);
        assert_eq!(done.status.code(), Some(2), "{name} {args:?}: {done:?}");
        assert!(
            done.stderr.contains(named)
                && (!usage || done.stderr.contains(&format!("Usage: {name}"))),
            "{name} {args:?} names {named} (and prints the usage: {usage}): {done:?}"
        );
        assert!(done.stdout.is_empty(), "{name} {args:?}: {done:?}");
    }
}
