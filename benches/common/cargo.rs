//! Where a bench finds the examples it starts, and the nested `cargo
//! build` that builds them, without the variables cargo sets for the bench
//! itself. The integration tests use [`clean_cargo_env`] too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where things are.
pub struct Paths {
    /// The crate root.
    pub manifest: PathBuf,
    /// `target/release/examples`.
    pub examples: PathBuf,
    /// `target/bench`: results and server logs.
    pub out: PathBuf,
}

/// Paths from the running bench's own location
/// (`target/release/deps/NAME-HASH`); the environment variable
/// `FOREMAN_BENCH_ROOT` points at another checkout.
pub fn paths() -> Paths {
    if let Some(root) = std::env::var_os("FOREMAN_BENCH_ROOT").map(PathBuf::from) {
        let target = root.join("target");
        return Paths {
            examples: target.join("release/examples"),
            out: target.join("bench"),
            manifest: root,
        };
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().unwrap_or_default();
    let release = exe
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target/release"));
    let target = release
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"));
    Paths {
        examples: release.join("examples"),
        out: target.join("bench"),
        manifest,
    }
}

/// Removes what cargo sets for a running bench or test (`CARGO_PKG_*`,
/// `CARGO_MANIFEST_*`, `CARGO_CRATE_NAME`, `CARGO_BIN_*`,
/// `CARGO_PRIMARY_PACKAGE`, `CARGO_TARGET_TMPDIR`, `OUT_DIR`) from a nested
/// cargo command. Build scripts such as ring's rerun when those change, so
/// a nested build that inherits the bench's values and the next
/// `cargo bench` without them would rebuild ring, rustls and foreman each
/// time (minutes).
pub fn clean_cargo_env(cmd: &mut Command) {
    const SET_FOR_BENCHES: [&str; 6] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
    ];
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if SET_FOR_BENCHES.iter().any(|p| key.starts_with(p)) || key == "OUT_DIR" {
            cmd.env_remove(key);
        }
    }
}

/// Builds `examples` in release mode with the cargo that runs us (`$CARGO`;
/// without it, as when the bench binary is run by hand, nothing is built
/// and `Ok` is returned). The error says which examples failed.
pub fn build_release_examples(manifest: &Path, examples: &[&str]) -> Result<(), String> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(manifest)
        .args(["build", "--release", "--quiet"]);
    for ex in examples {
        cmd.args(["--example", ex]);
    }
    clean_cargo_env(&mut cmd);
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("cargo build --release of {examples:?}: {s}")),
        Err(e) => Err(format!("cannot run {cargo}: {e}")),
    }
}
