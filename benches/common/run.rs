//! What the benches that start servers share around a run: the command
//! line and the build, a temp dir per run, medians and quantiles, the
//! machine's load average, and the JSON file of results. A bench that
//! includes this file includes benches/common/cargo.rs as `mod cargo` too.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Parses a bench's command line: `--NAME N` (a positive integer) into the
/// `numbers` named, `--no-build` (clears `build`), and cargo's `--bench`
/// (ignored). `Ok(false)` for `--help` or `-h`.
pub fn parse_args(
    args: &[String],
    numbers: &mut [(&str, &mut usize)],
    build: &mut bool,
) -> Result<bool, String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-build" => *build = false,
            "--help" | "-h" => return Ok(false),
            "--bench" => {}
            other => {
                let Some((name, field)) = numbers.iter_mut().find(|(n, _)| *n == other) else {
                    return Err(format!("unknown option {other:?}; see --help"));
                };
                **field = it
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{name} needs a positive integer"))?;
            }
        }
    }
    Ok(true)
}

/// The start of a bench's `main`: the options from the command line by
/// `parse` (`Ok(None)`: `--help`, which prints `help`), then `examples`
/// built in release mode unless `build` says no. `Err` is the exit code
/// to return at once (the help or the error printed).
pub fn begin<O>(
    help: &str,
    parse: fn(&[String]) -> Result<Option<O>, String>,
    build: fn(&O) -> bool,
    examples: &[&str],
) -> Result<(O, crate::cargo::Paths), ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{help}");
            return Err(ExitCode::SUCCESS);
        }
        Err(e) => {
            eprintln!("bench: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let paths = crate::cargo::paths();
    if build(&o) {
        if let Err(e) = crate::cargo::build_release_examples(&paths.manifest, examples) {
            eprintln!("bench: {e}");
            return Err(ExitCode::FAILURE);
        }
    }
    Ok((o, paths))
}

/// A temp dir, `foreman-bench-BENCH-PID-TAG`, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates it afresh (whatever an earlier run left there goes).
    pub fn new(bench: &str, tag: &str) -> Result<TempDir, String> {
        let dir = std::env::temp_dir().join(format!(
            "foreman-bench-{bench}-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The median of `v` (the mean of the middle two for an even count; 0 for
/// none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The 1-minute load average, from /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `doc`, pretty, to `out/NAME` (creating `out`) and says where
/// (`JSON: PATH`), or why not; whether it was written.
pub fn write_json(out: &Path, name: &str, doc: &Value) -> bool {
    let path: PathBuf = out.join(name);
    let written = std::fs::create_dir_all(out).and_then(|_| {
        serde_json::to_string_pretty(doc)
            .map_err(std::io::Error::other)
            .and_then(|t| std::fs::write(&path, t))
    });
    match &written {
        Ok(()) => println!("JSON: {}", path.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", path.display()),
    }
    written.is_ok()
}

/// The `q` quantile (0..=1) of sorted microseconds, in milliseconds
/// (nearest rank; 0 for none).
pub fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}
