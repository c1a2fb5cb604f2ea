//! The command line every foreman server understands, in the Workerman style:
//!
//! ```text
//! PROGRAM [start] [-d] [-c FILE] [--listen URL] [--count N] [--reuse-port]
//! PROGRAM stop [-g] [-c FILE]     stop the server named by the pid file
//! PROGRAM restart [-d] [-c FILE]  stop it if running, then start
//! PROGRAM reload [-c FILE]        read the config again, replace workers one at a time
//! PROGRAM status [-c FILE]        a table of the master and its workers
//! PROGRAM connections [-c FILE]   a table of every connection
//! ```
//!
//! `stop`, `restart`, `reload`, `status` and `connections` find the running master through
//! `server.pid_file` in the config, which must be set for them. Arguments the
//! library does not know are left in [`Args::rest`] for the application.

use crate::config::Config;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Command {
    /// Run the server in the foreground (the default).
    #[default]
    Start,
    /// Stop a running server (`-g`: graceful; foreman's stop is always
    /// graceful, bounded by `stop_timeout`).
    Stop,
    /// Stop a running server (if any), then start.
    Restart,
    /// Replace a running server's workers one at a time, with the config
    /// read again (see [`crate::Server::reload_config`]).
    Reload,
    /// Print a running server's processes with their connections, memory,
    /// queues and counters.
    Status,
    /// Print every connection of a running server: worker, id, protocol,
    /// state, addresses, queued output, idle time and uid.
    Connections,
}

/// A parsed command line.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// The command (first word), `start` if absent.
    pub command: Command,
    /// `-c FILE` / `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--listen URL`.
    pub listen: Option<String>,
    /// `--count N`.
    pub count: Option<usize>,
    /// `--reuse-port` (or `--reuse-port=false`).
    pub reuse_port: Option<bool>,
    /// `-d`: detach from the terminal (start only).
    pub daemon: bool,
    /// Arguments not recognised here, in order, for the application.
    pub rest: Vec<String>,
}

impl Args {
    /// Parses the process's own arguments.
    pub fn from_env() -> Result<Args> {
        Args::parse(std::env::args().skip(1))
    }

    /// Parses arguments (without the program name).
    pub fn parse<I, S>(args: I) -> Result<Args>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out = Args::default();
        let mut it = args.into_iter().map(Into::into).peekable();
        let mut first = true;
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
            };
            match flag.as_str() {
                "start" if first => out.command = Command::Start,
                "stop" if first => out.command = Command::Stop,
                "restart" if first => out.command = Command::Restart,
                "reload" if first => out.command = Command::Reload,
                "status" if first => out.command = Command::Status,
                "connections" if first => out.command = Command::Connections,
                "-c" | "--config" => out.config = Some(value("-c")?.into()),
                "--listen" => out.listen = Some(value("--listen")?),
                "--count" => {
                    let v = value("--count")?;
                    let n = v
                        .parse()
                        .map_err(|_| Error::Usage(format!("--count {v:?}: not a number")))?;
                    out.count = Some(n);
                }
                "--reuse-port" => {
                    out.reuse_port = Some(match inline.as_deref() {
                        None | Some("true") => true,
                        Some("false") => false,
                        Some(v) => {
                            return Err(Error::Usage(format!(
                                "--reuse-port={v}: use true or false"
                            )))
                        }
                    })
                }
                "-d" => out.daemon = true,
                "-g" => {}
                _ => out.rest.push(arg),
            }
            first = false;
        }
        Ok(out)
    }

    /// Applies `--listen`, `--count` and `--reuse-port` to a config, and
    /// validates the result.
    pub fn apply(&self, config: &mut Config) -> Result<()> {
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

    /// The config this command line names: the `-c` file (or defaults) with the
    /// flags applied.
    pub fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        self.apply(&mut c)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_commands_and_leftovers() {
        let a = Args::parse(["stop", "-c", "x.toml", "--count=3", "--tick-ms", "5"]).unwrap();
        assert_eq!(a.command, Command::Stop);
        assert_eq!(a.config, Some("x.toml".into()));
        assert_eq!(a.count, Some(3));
        assert_eq!(a.rest, vec!["--tick-ms", "5"]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(Args::parse(["--count", "many"]).is_err());
        assert!(Args::parse(["--listen"]).is_err());
        assert!(Args::parse(["--reuse-port=maybe"]).is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let a = Args::parse(["--listen", "text://127.0.0.1:0", "--reuse-port"]).unwrap();
        let mut c = Config::default();
        a.apply(&mut c).unwrap();
        assert_eq!(c.listen_url(), "text://127.0.0.1:0");
        assert!(c.reuse_port);
    }
}
