//! Which OCI runtime binary the tests drive.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Names the runtime under test: a path, or a name looked up in PATH and the sbin dirs.
pub const RUNTIME_ENV: &str = "RTEST_RUNTIME";

/// The runtime under test: `$RTEST_RUNTIME` if set (e.g. `/usr/sbin/runc` to check a test
/// against runc), else the workspace's runr, the newer of target/debug and target/release.
pub fn runtime_under_test() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(RUNTIME_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        return match which(&p) {
            Some(found) => Ok(found),
            None => bail!("{RUNTIME_ENV}={} does not exist", p.display()),
        };
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let newest = ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile).join("runr"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    match newest {
        Some((_, p)) => Ok(p),
        None => bail!(
            "runr is not built (no {0}/debug/runr or {0}/release/runr): run `cargo build -p runr`, \
             or set {RUNTIME_ENV}=/usr/sbin/runc to run the test against runc",
            target.display()
        ),
    }
}

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A path as is if it has a directory part, else the first match in PATH or the sbin dirs.
pub fn which(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(p))
        .find(|c| c.is_file());
    found
}
