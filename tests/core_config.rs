//! A bad config stops the binary at start: non-zero exit, a message naming
//! the key, and no listener.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Runs `echo -c FILE --listen websocket://127.0.0.1:0 ARGS` with `toml`.
fn run_echo(toml: &str, args: &[&str]) -> Finished {
    let config = TempFile::new("toml", toml);
    let mut cmd = Command::new(example("echo"));
    cmd.arg("-c")
        .arg(&config.path)
        .args(["--listen", "websocket://127.0.0.1:0"])
        .args(args);
    run_to_exit(&mut cmd, Duration::from_secs(20))
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    // (config, extra flags, the key named, what it says about it)
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("[server]\ncuont = 2\n", &[], "cuont", "unknown field"),
        ("[server]\ncount = 0\n", &[], "count", "must be 1 to 1024"),
        (
            "[server]\ncount = \"two\"\n",
            &[],
            "count",
            "expected usize",
        ),
        (
            "[server]\nlisten = \"nohost\"\n",
            &[],
            "listen",
            "host:port",
        ),
        (
            "[server]\nmax_output_bytes = 10\n",
            &[],
            "max_output_bytes",
            "at least 1024",
        ),
        (
            "[server]\nidle_timeout_ms = -1\n",
            &[],
            "idle_timeout_ms",
            "-1",
        ),
        ("", &["--count", "0"], "count", "must be 1 to 1024"),
    ];
    for (toml, args, key, detail) in cases {
        let done = run_echo(toml, args);
        assert!(
            !done.status.success(),
            "{toml:?} {args:?}: exit {:?}",
            done.status
        );
        assert!(
            done.stderr.contains(key) && done.stderr.contains(detail),
            "{toml:?} {args:?}: the message names {key:?} and says {detail:?}: {:?}",
            done.stderr
        );
        assert!(
            !done.stdout.contains("listening on"),
            "{toml:?} {args:?}: it never listens: {:?}",
            done.stdout
        );
    }
}
