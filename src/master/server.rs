//! [`Server`]: the public face of the master: a config, a command, and `run`.

use super::control;
use super::{Master, Reconfigure};
use crate::cli::{Args, Command};
use crate::config::Config;
use crate::error::Result;
use crate::handler::Handler;
use nix::sys::signal::Signal;

/// A server: a config and the command to carry out. See the crate docs.
pub struct Server {
    cfg: Config,
    command: Command,
    reconfigure: Option<Reconfigure>,
}

impl Server {
    /// A server that will `start` with this config.
    pub fn new(cfg: Config) -> Server {
        Server {
            cfg,
            command: Command::default(),
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
    /// the `-c` file, the flags, and the command. A usage error, `--help`
    /// and `--version` exit here (see [`Args::from_env`]).
    pub fn from_args() -> Result<Server> {
        Server::with_args(&Args::from_env())
    }

    /// A server as a parsed command line asks: the `-c` file (or defaults) with
    /// the flags applied, and the command.
    pub fn with_args(args: &Args) -> Result<Server> {
        let again = args.flags.clone();
        Ok(Server::new(args.config()?)
            .command(args.verb())
            .reload_config(move || again.config()))
    }

    /// Sets the command to carry out (default `start` in the foreground).
    /// `Command::Start { daemon: true }` (`start -d`) detaches once the server
    /// listens: the command returns, the master lives on in the background
    /// with stdin, stdout and stderr on `/dev/null` (stderr on `log_file` if
    /// set), and `stop` (which needs `pid_file`) ends it.
    pub fn command(mut self, command: Command) -> Server {
        self.command = command;
        self
    }

    /// The config this server runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Carries out the command. For `start`: takes the lock of `pid_file`
    /// (if set), binds, prints `listening on URL` on stdout, forks `count`
    /// workers that each call `factory(worker_id)` once for their handler,
    /// supervises them until SIGINT or SIGTERM, stops gracefully, and returns
    /// `Ok(())`. `stop`, `restart`, `reload`, `status` and `connections`
    /// signal or ask only the process that holds the lock of `pid_file`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Running`] if another master holds the pid file's lock
    /// (nothing is bound), [`crate::Error::NotRunning`] if a command finds no
    /// master holding it (nothing is signalled),
    /// [`crate::Error::Threaded`] if the process already has other threads (fork would
    /// copy only this one), [`crate::Error::Listen`] if the address cannot be bound,
    /// [`crate::Error::Config`] for an invalid config.
    pub fn run<H, F>(self, factory: F) -> Result<()>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        self.cfg.validate()?;
        let daemon = self.command.daemon();
        match self.command {
            Command::Start { .. } => Master::start(self.cfg, daemon, self.reconfigure, factory),
            Command::Stop { .. } => control::stop(&self.cfg),
            Command::Restart { .. } => {
                if let Some(master) = control::running(&self.cfg)? {
                    control::stop_master(&self.cfg, &master)?;
                }
                Master::start(self.cfg, daemon, self.reconfigure, factory)
            }
            Command::Reload => control::signal(&self.cfg, Signal::SIGUSR1, "reload"),
            Command::Status => control::status(&self.cfg),
            Command::Connections => control::connections(&self.cfg),
        }
    }
}
