//! The nested `cargo build` the benches run to build the examples they
//! start, without the variables cargo sets for the bench itself.

use std::path::Path;
use std::process::Command;

/// Removes what cargo sets for a running bench (`CARGO_PKG_*`,
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
