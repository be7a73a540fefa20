//! What a task leaves on disk, so that a new rcd process finds every shim again.
//!
//! `<state>/tasks/<namespace>/<id>/` is the bundle the shim runs in (its cwd):
//! `config.json`, `rootfs/`, `log` (the shim's log FIFO), the shim's own files (`address`,
//! `shim.pid`, …), and rcd's: `task.json` (the [`TaskRecord`], written before the shim is
//! started) and `exit` (the init's [`Exit`], written as soon as rcd learns it, so an exit
//! survives a shim that dies afterwards).

use super::error::{Result, TaskError};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const RECORD_FILE: &str = "task.json";
pub(crate) const EXIT_FILE: &str = "exit";
pub(crate) const ADDRESS_FILE: &str = "address";
pub(crate) const LOG_FIFO: &str = "log";

/// rcd's record of one task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskRecord {
    pub namespace: String,
    pub id: String,
    pub shim_binary: PathBuf,
    /// The shim's ttrpc address (`unix:///…`), once its `start` answered.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub shim_pid: Option<u32>,
    /// Whether rcd handed rootfs mounts to the shim (then `<bundle>/rootfs` is a mount point
    /// to unmount if the shim could not).
    #[serde(default)]
    pub rootfs_mounted: bool,
    pub created_at_ms: u64,
}

/// How a process ended: the shim's `exit_status` (128+signal when killed) and when.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
    /// Milliseconds since the Unix epoch.
    pub exited_at_ms: u64,
}

impl Exit {
    pub fn exited_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.exited_at_ms)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `data` to `path` through a temporary file and rename: a reader (or a new rcd after
/// a crash or `kill -9`) sees the old content or the new, never a torn file. No fsync: these
/// files live in the state dir (`/run/rcd`, volatile like containerd's), describing
/// processes that a power loss ends anyway; the page cache outlives a killed rcd, and an
/// fsync on a disk-backed state dir cost milliseconds on each task create and delete.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| TaskError::io("creating", &tmp, e))?;
    f.write_all(data)
        .map_err(|e| TaskError::io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| TaskError::io("renaming into place", path, e))?;
    Ok(())
}

impl TaskRecord {
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let data = serde_json::to_vec_pretty(self).expect("a task record serializes");
        write_atomic(&bundle.join(RECORD_FILE), &data)
    }

    pub fn load(bundle: &Path) -> Result<Option<TaskRecord>> {
        let path = bundle.join(RECORD_FILE);
        match fs::read(&path) {
            Ok(data) => {
                serde_json::from_slice(&data)
                    .map(Some)
                    .map_err(|e| TaskError::CorruptRecord {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TaskError::io("reading", path, e)),
        }
    }
}

pub(crate) fn save_exit(bundle: &Path, exit: &Exit) -> Result<()> {
    let data = serde_json::to_vec(exit).expect("an exit serializes");
    write_atomic(&bundle.join(EXIT_FILE), &data)
}

pub(crate) fn load_exit(bundle: &Path) -> Option<Exit> {
    let data = fs::read(bundle.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The address a shim's `start` wrote into its bundle (containerd's `address` file).
pub(crate) fn load_address(bundle: &Path) -> Option<String> {
    let s = fs::read_to_string(bundle.join(ADDRESS_FILE)).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// containerd's rule for namespaces and (looser) for ids: they become path components, so
/// no `/`, no `..`, nothing empty or over-long.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(TaskError::InvalidName {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > 76 {
        return bad("longer than 76 bytes");
    }
    if value.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("task id", "web-1_a.b").is_ok());
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(77)] {
            let e = check_name("task id", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid task id"), "{e}");
        }
    }

    #[test]
    fn record_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TaskRecord::load(dir.path()).unwrap(), None);
        let r = TaskRecord {
            namespace: "ns".into(),
            id: "a".into(),
            shim_binary: "/bin/shim".into(),
            address: Some("unix:///x".into()),
            shim_pid: Some(7),
            rootfs_mounted: true,
            created_at_ms: 1,
        };
        r.save(dir.path()).unwrap();
        assert_eq!(TaskRecord::load(dir.path()).unwrap(), Some(r));
        fs::write(dir.path().join(RECORD_FILE), b"{").unwrap();
        let e = TaskRecord::load(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("corrupt task record"), "{e}");
        let exit = Exit {
            pid: 3,
            status: 7,
            exited_at_ms: 5,
        };
        save_exit(dir.path(), &exit).unwrap();
        assert_eq!(load_exit(dir.path()), Some(exit));
    }
}
