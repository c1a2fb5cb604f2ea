//! The command line every foreman server understands, in the Workerman style,
//! parsed with [clap](https://docs.rs/clap):
//!
//! ```text
//! PROGRAM [start] [-d] [-c FILE] [--listen URL] [--count N] [--reuse-port]
//! PROGRAM stop [-g]           stop the server named by the pid file
//! PROGRAM restart [-d]        stop it if running, then start
//! PROGRAM reload              read the config again, replace workers one at a time
//! PROGRAM status              a table of the master and its workers
//! PROGRAM connections         a table of every connection
//! PROGRAM help [COMMAND]      what `-h`/`--help` print; `--version` prints the version
//! ```
//!
//! The flags (`-c`, `--listen`, `--count`, `--reuse-port`) may come before or
//! after the command: `chat --count 4 start` and `chat start --count 4` are the
//! same. An unknown flag or a bad value prints the usage and exits with code 2.
//! `stop`, `restart`, `reload`, `status` and `connections` find the running
//! master through `server.pid_file` in the config, which must be set for them.
//!
//! # An application's own flags
//!
//! An application without flags of its own calls [`Args::from_env`]. One with
//! flags writes its own clap parser and flattens [`Args`] into it; marking its
//! flags `global = true` lets them follow the command too:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! #[command(version, about = "A server that ticks")]
//! struct Cli {
//!     #[command(flatten)]
//!     server: foreman::cli::Args,
//!     /// Milliseconds between ticks
//!     #[arg(long, global = true, default_value_t = 0)]
//!     tick_ms: u64,
//! }
//!
//! let cli = Cli::parse();
//! let server = foreman::Server::with_args(&cli.server);
//! ```
//!
//! An application with commands of its own (the chat's `token NAME`) flattens
//! [`Flags`] into its parser and [`Command`] into its own subcommand enum, and
//! builds an [`Args`] from the two.

use crate::config::Config;
use crate::error::Result;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What the command line asks for (its first word; `start` if absent).
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run the server (the default command)
    Start {
        /// Detach from the terminal once listening; the log goes to log_file,
        /// or nowhere
        #[arg(short = 'd', long)]
        daemon: bool,
    },
    /// Stop the server named by the pid file and wait until it is gone
    Stop {
        /// Graceful stop, as in Workerman; foreman's stop is always graceful
        /// (clients get close 1001; stop_timeout_ms bounds it)
        #[arg(short = 'g', long)]
        graceful: bool,
    },
    /// Stop the server named by the pid file (if it runs), then start
    Restart {
        /// Detach from the terminal once listening; the log goes to log_file,
        /// or nowhere
        #[arg(short = 'd', long)]
        daemon: bool,
    },
    /// Read the config again and replace the workers one at a time (the
    /// listener never closes)
    Reload,
    /// Print the master and each worker: pid, uptime, memory, connections,
    /// queues and counters
    Status,
    /// Print every connection: worker, id, protocol, state, addresses, queued
    /// output, idle time and uid
    Connections,
}

impl Default for Command {
    fn default() -> Command {
        Command::Start { daemon: false }
    }
}

impl Command {
    /// Whether the command starts a server that detaches (`start -d`,
    /// `restart -d`).
    pub fn daemon(self) -> bool {
        matches!(
            self,
            Command::Start { daemon: true } | Command::Restart { daemon: true }
        )
    }

    /// Whether the command starts a server (`start` or `restart`).
    pub fn starts(self) -> bool {
        matches!(self, Command::Start { .. } | Command::Restart { .. })
    }
}

/// The library's flags. They are global: they may come before or after the
/// command.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// The config file, TOML (the library reads its server table)
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Listen on URL instead of the config's listen: websocket://, text://,
    /// frame:// or tcp:// + host:port
    #[arg(long, value_name = "URL", global = true)]
    pub listen: Option<String>,
    /// Worker processes
    #[arg(long, value_name = "N", global = true)]
    pub count: Option<usize>,
    /// One SO_REUSEPORT listening socket per worker (--reuse-port=false turns
    /// it off)
    #[arg(
        long,
        value_name = "BOOL",
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub reuse_port: Option<bool>,
    /// Where the master writes its pid (instead of the config's pid_file)
    #[arg(long, value_name = "FILE", global = true)]
    pub pid_file: Option<String>,
    /// Join a cluster through this Redis (redis://host:port/db), instead of
    /// the config's [cluster] redis_url
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,
    /// This node's name in the cluster (instead of [cluster] node)
    #[arg(long, value_name = "NAME", global = true)]
    pub node: Option<String>,
}

impl Flags {
    /// Applies `--listen`, `--count`, `--reuse-port`, `--pid-file`,
    /// `--redis-url` and `--node` to a config, and validates the result.
    pub fn apply(&self, config: &mut Config) -> Result<()> {
        if let Some(p) = &self.pid_file {
            config.pid_file = Some(p.clone());
        }
        if self.redis_url.is_some() || self.node.is_some() {
            let current = config.cluster.as_ref();
            let section = crate::ClusterSection {
                redis_url: self
                    .redis_url
                    .clone()
                    .or_else(|| current.map(|c| c.redis.to_url())),
                node: self
                    .node
                    .clone()
                    .or_else(|| current.map(|c| c.node.clone())),
                presence_ttl_ms: current.map(|c| c.presence_ttl.as_millis() as u64),
                prefix: current.map(|c| c.prefix.clone()),
            };
            if section.redis_url.is_none() {
                return Err(crate::Error::Config(
                    "--node needs a cluster: give --redis-url or [cluster] redis_url".into(),
                ));
            }
            config.set_cluster(&section)?;
        }
        if let Some(l) = &self.listen {
            config.set_listen(l)?;
        }
        if let Some(n) = self.count {
            config.count = n;
        }
        if let Some(r) = self.reuse_port {
            config.reuse_port = r;
        }
        config.validate()
    }

    /// The config these flags name: the `-c` file (or the defaults) with the
    /// other flags applied.
    pub fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        self.apply(&mut c)?;
        Ok(c)
    }
}

/// A parsed command line: the command and the library's flags. Parse it with
/// [`Args::from_env`], or flatten it into an application's own clap parser
/// (see the [module docs](self)).
#[derive(Parser, Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// The command; `None` (no command given) means `start`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `-c`, `--listen`, `--count`, `--reuse-port`.
    #[command(flatten)]
    pub flags: Flags,
}

impl Args {
    /// Parses the process's own arguments. `--help`, `-h` and `--version`
    /// print and exit 0; an unknown flag or a bad value prints the usage and
    /// exits 2. The program's name in the usage and in `--version` is the
    /// executable's; the version is foreman's (an application with a version
    /// of its own uses its own parser, see the [module docs](self)).
    pub fn from_env() -> Args {
        Args::try_from_iter(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args`, the first being the program (as in
    /// [`std::env::args_os`]). The error prints as clap's usage message
    /// ([`clap::Error::exit`] prints it and exits with its code).
    pub fn try_from_iter<I, T>(args: I) -> std::result::Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args = args.into_iter().map(Into::into).peekable();
        let name = args
            .peek()
            .and_then(|a| Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "foreman".into());
        let matches: ArgMatches = <Args as CommandFactory>::command()
            .name(name)
            .version(env!("CARGO_PKG_VERSION"))
            .about("A foreman server: a master and its forked workers")
            .try_get_matches_from(args)?;
        Args::from_arg_matches(&matches)
    }

    /// The command (Workerman's verb), `start` when none was given.
    pub fn verb(&self) -> Command {
        self.command.unwrap_or_default()
    }

    /// The config this command line names: the `-c` file (or the defaults)
    /// with the flags applied.
    pub fn config(&self) -> Result<Config> {
        self.flags.config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Args, clap::Error> {
        Args::try_from_iter(std::iter::once("prog").chain(args.iter().copied()))
    }

    #[test]
    fn flags_before_or_after_the_command_are_the_same() {
        let before = parse(&["-c", "x.toml", "--count=3", "stop", "-g"]).unwrap();
        let after = parse(&["stop", "-g", "--config", "x.toml", "--count", "3"]).unwrap();
        assert_eq!(before, after);
        assert_eq!(before.verb(), Command::Stop { graceful: true });
        assert_eq!(before.flags.config, Some("x.toml".into()));
        assert_eq!(before.flags.count, Some(3));
    }

    #[test]
    fn cluster_flags_set_the_cluster() {
        let a = parse(&["--redis-url", "redis://127.0.0.1:7/2", "--node", "n1"]).unwrap();
        let c = a.flags.config().unwrap().cluster.expect("a cluster");
        assert_eq!((c.node.as_str(), c.redis.port, c.redis.db), ("n1", 7, 2));
        let e = parse(&["--node", "n1"])
            .unwrap()
            .flags
            .config()
            .unwrap_err();
        assert!(e.to_string().contains("--redis-url"), "{e}");
        let e = parse(&["--redis-url", "http://x"])
            .unwrap()
            .flags
            .config()
            .unwrap_err();
        assert!(e.to_string().contains("cluster.redis_url"), "{e}");
        let a = parse(&["--pid-file", "/tmp/x.pid"]).unwrap();
        assert_eq!(
            a.flags.config().unwrap().pid_file.as_deref(),
            Some("/tmp/x.pid")
        );
    }

    #[test]
    fn no_command_is_start_and_d_belongs_to_start_and_restart() {
        assert_eq!(parse(&[]).unwrap().verb(), Command::default());
        assert!(parse(&["start", "-d"]).unwrap().verb().daemon());
        assert!(parse(&["restart", "-d"]).unwrap().verb().daemon());
        assert!(!parse(&["restart"]).unwrap().verb().daemon());
        assert!(parse(&["stop", "-d"]).is_err());
    }

    #[test]
    fn bad_values_and_unknown_flags_are_usage_errors() {
        for bad in [
            &["--count", "many"][..],
            &["--listen"],
            &["--reuse-port=maybe"],
            &["--tick-ms", "5"],
            &["launch"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn reuse_port_takes_an_optional_value() {
        assert_eq!(
            parse(&["--reuse-port"]).unwrap().flags.reuse_port,
            Some(true)
        );
        let off = parse(&["--reuse-port=false"]).unwrap();
        assert_eq!(off.flags.reuse_port, Some(false));
        assert_eq!(parse(&[]).unwrap().flags.reuse_port, None);
    }

    #[test]
    fn flags_override_the_file() {
        let a = parse(&["--listen", "text://127.0.0.1:0", "--reuse-port"]).unwrap();
        let mut c = Config::default();
        a.flags.apply(&mut c).unwrap();
        assert_eq!(c.listen_url(), "text://127.0.0.1:0");
        assert!(c.reuse_port);
    }

    #[test]
    fn the_parser_is_consistent() {
        <Args as CommandFactory>::command().debug_assert();
    }
}
