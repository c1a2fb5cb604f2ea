//! The job kinds this executor knows, chosen by the payload's `kind`. Each
//! runs on a thread of the blocking pool and ends in an [`Outcome`]: what
//! the executor reports with `done` or `fail`.
//!
//! | kind | arguments | result |
//! |---|---|---|
//! | `noop` | | `null` |
//! | `sleep` | `ms` | `{"slept_ms": ms}` after sleeping that long |
//! | `sha256` | `data` (string), `rounds` (default 1) | `{"hex": ...}`: SHA-256 of `data`, then of that digest, `rounds` times in all |
//! | `fail` | `times` | fails with retry while `attempt <= times`, then `{"attempt": N}` |
//! | `echo` | `value` | `value` (`null` if absent) |
//! | `exec` | `program`, `args` (strings) | `{"code", "stdout", "stderr"}` when it exits 0; only for programs given with `--allow-exec` |
//!
//! Bad arguments fail without retry (`{"bad_args": why}`), and so does a
//! kind this executor does not know (`{"unknown_kind": KIND}`): running it
//! again would not help.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::process::Command;
use std::time::Duration;

/// The longest `sleep` a job may ask for: a day.
const MAX_SLEEP_MS: u64 = 86_400_000;

/// The most `sha256` rounds a job may ask for.
const MAX_ROUNDS: u64 = 100_000_000;

/// How much of an `exec` program's stdout and stderr a result keeps, each.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `done {job, result}`.
    Done(Value),
    /// `fail {job, error, retry}`.
    Fail {
        /// The reason, for the job's `error` if it ends dead.
        error: Value,
        /// Whether another attempt could succeed.
        retry: bool,
    },
}

/// Runs one job: `payload` as pushed, `attempt` its attempt number, and
/// `allowed` the programs `exec` may run. Blocks for as long as the job.
pub fn run(payload: &Value, attempt: u64, allowed: &[String]) -> Outcome {
    let args = payload.as_object();
    let arg = |key: &str| args.and_then(|a| a.get(key));
    let kind = arg("kind").and_then(Value::as_str).unwrap_or_default();
    let outcome = match kind {
        "noop" => Ok(Value::Null),
        "sleep" => sleep(arg("ms")),
        "sha256" => sha256(arg("data"), arg("rounds")),
        "fail" => return fail(arg("times"), attempt),
        "echo" => Ok(arg("value").cloned().unwrap_or(Value::Null)),
        "exec" => return exec(arg("program"), arg("args"), allowed),
        _ => {
            let kind = arg("kind").cloned().unwrap_or(Value::Null);
            return Outcome::Fail {
                error: json!({ "unknown_kind": kind }),
                retry: false,
            };
        }
    };
    outcome.map_or_else(|why| bad_args(&why), Outcome::Done)
}

fn bad_args(why: &str) -> Outcome {
    Outcome::Fail {
        error: json!({ "bad_args": why }),
        retry: false,
    }
}

/// An integer argument from 0 to `max`; `default` when absent.
fn number(
    value: Option<&Value>,
    name: &str,
    default: Option<u64>,
    max: u64,
) -> Result<u64, String> {
    match value {
        None => default.ok_or_else(|| format!("{name} is required")),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{name} must be an integer from 0 to {max}")),
    }
}

fn sleep(ms: Option<&Value>) -> Result<Value, String> {
    let ms = number(ms, "ms", None, MAX_SLEEP_MS)?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(json!({ "slept_ms": ms }))
}

fn sha256(data: Option<&Value>, rounds: Option<&Value>) -> Result<Value, String> {
    let data = data
        .and_then(Value::as_str)
        .ok_or("data must be a string")?;
    let rounds = number(rounds, "rounds", Some(1), MAX_ROUNDS)?;
    if rounds == 0 {
        return Err("rounds must be at least 1".into());
    }
    let mut digest = Sha256::digest(data.as_bytes());
    for _ in 1..rounds {
        digest = Sha256::digest(digest);
    }
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(json!({ "hex": hex }))
}

fn fail(times: Option<&Value>, attempt: u64) -> Outcome {
    match number(times, "times", None, u64::MAX) {
        Err(why) => bad_args(&why),
        Ok(times) if attempt <= times => Outcome::Fail {
            error: json!({ "attempt": attempt, "times": times }),
            retry: true,
        },
        Ok(_) => Outcome::Done(json!({ "attempt": attempt })),
    }
}

fn exec(program: Option<&Value>, args: Option<&Value>, allowed: &[String]) -> Outcome {
    let Some(program) = program.and_then(Value::as_str) else {
        return bad_args("program must be a string");
    };
    if !allowed.iter().any(|a| a == program) {
        return Outcome::Fail {
            error: json!("exec not allowed"),
            retry: false,
        };
    }
    let args = match args {
        None => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).collect()
        }
        Some(_) => return bad_args("args must be an array of strings"),
    };
    let output = match Command::new(program).args(&args).output() {
        Ok(o) => o,
        // Missing or not executable: another attempt fails the same way.
        Err(e) => {
            return Outcome::Fail {
                error: json!({ "exec": format!("cannot run {program}: {e}") }),
                retry: false,
            }
        }
    };
    let text = |bytes: &[u8]| {
        let kept = &bytes[..bytes.len().min(MAX_OUTPUT_BYTES)];
        Value::String(String::from_utf8_lossy(kept).into_owned())
    };
    let mut report = Map::new();
    // A program killed by a signal has no exit code.
    report.insert("code".into(), json!(output.status.code()));
    report.insert("stdout".into(), text(&output.stdout));
    report.insert("stderr".into(), text(&output.stderr));
    if output.status.success() {
        Outcome::Done(Value::Object(report))
    } else {
        // A command that failed may well work next time (the scheduler
        // stops after max_attempts).
        Outcome::Fail {
            error: Value::Object(report),
            retry: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_it(payload: Value, attempt: u64) -> Outcome {
        run(&payload, attempt, &["/bin/sh".to_string()])
    }

    fn permanent(error: Value) -> Outcome {
        Outcome::Fail {
            error,
            retry: false,
        }
    }

    #[test]
    fn simple_kinds_answer_their_results() {
        assert_eq!(
            run_it(json!({"kind": "noop"}), 1),
            Outcome::Done(Value::Null)
        );
        assert_eq!(
            run_it(json!({"kind": "sleep", "ms": 1}), 1),
            Outcome::Done(json!({"slept_ms": 1}))
        );
        assert_eq!(
            run_it(json!({"kind": "echo", "value": {"a": [1, "x"]}}), 1),
            Outcome::Done(json!({"a": [1, "x"]}))
        );
        assert_eq!(
            run_it(json!({"kind": "echo"}), 1),
            Outcome::Done(Value::Null)
        );
    }

    #[test]
    fn sha256_hashes_its_own_digest_each_round() {
        // SHA-256("abc"), FIPS 180-2's example.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            run_it(json!({"kind": "sha256", "data": "abc"}), 1),
            Outcome::Done(json!({ "hex": abc }))
        );
        let once = Sha256::digest(b"abc");
        let twice: String = Sha256::digest(once)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            run_it(json!({"kind": "sha256", "data": "abc", "rounds": 2}), 1),
            Outcome::Done(json!({ "hex": twice }))
        );
        for bad in [
            json!({"kind": "sha256"}),
            json!({"kind": "sha256", "data": "a", "rounds": 0}),
        ] {
            assert!(matches!(run_it(bad, 1), Outcome::Fail { retry: false, .. }));
        }
    }

    #[test]
    fn fail_retries_until_its_attempts_are_used() {
        let job = json!({"kind": "fail", "times": 2});
        for attempt in 1..=2 {
            assert_eq!(
                run_it(job.clone(), attempt),
                Outcome::Fail {
                    error: json!({"attempt": attempt, "times": 2}),
                    retry: true
                }
            );
        }
        assert_eq!(run_it(job, 3), Outcome::Done(json!({"attempt": 3})));
    }

    #[test]
    fn exec_runs_only_allowed_programs() {
        let ok = run_it(
            json!({"kind": "exec", "program": "/bin/sh", "args": ["-c", "echo hi; echo err >&2"]}),
            1,
        );
        assert_eq!(
            ok,
            Outcome::Done(json!({"code": 0, "stdout": "hi\n", "stderr": "err\n"}))
        );
        let failed = run_it(
            json!({"kind": "exec", "program": "/bin/sh", "args": ["-c", "exit 3"]}),
            1,
        );
        assert!(matches!(failed, Outcome::Fail { retry: true, error } if error["code"] == 3));
        assert_eq!(
            run_it(json!({"kind": "exec", "program": "/bin/echo"}), 1),
            permanent(json!("exec not allowed"))
        );
    }

    #[test]
    fn unknown_kinds_and_bad_arguments_fail_for_good() {
        assert_eq!(
            run_it(json!({"kind": "paint"}), 1),
            permanent(json!({"unknown_kind": "paint"}))
        );
        assert_eq!(
            run_it(json!([1, 2]), 1),
            permanent(json!({"unknown_kind": null}))
        );
        assert_eq!(
            run_it(json!({"kind": "sleep", "ms": -1}), 1),
            permanent(json!({"bad_args": "ms must be an integer from 0 to 86400000"}))
        );
    }
}
