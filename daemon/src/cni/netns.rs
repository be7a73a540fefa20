//! Named, pinned network namespaces: a pod's network namespace outlives every process in it
//! because it is bind-mounted onto a file (`<dir>/<name>`), as `ip netns add` and containerd's
//! netns package do. Containers join it by path.
//!
//! The namespace is created by a short-lived thread that `unshare`s only itself, so no other
//! thread of the daemon ever changes namespace.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("network namespace {path} already exists")]
    Exists { path: PathBuf },
    #[error("network namespace {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("network namespace {path}: {what}: {source}")]
    Sys {
        path: PathBuf,
        what: &'static str,
        source: nix::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("network namespace thread for {path} panicked")]
    ThreadPanicked { path: PathBuf },
}

/// A pinned network namespace, named by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates `<dir>/<name>` holding a new, empty network namespace (only `lo`, down).
    /// Fails if that path already exists; nothing is left behind on failure.
    pub fn create(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
        check_name(name)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(|source| NetnsError::Io {
                path: dir.to_path_buf(),
                what: "creating the directory",
                source,
            })?;
        let path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Exists { path });
            }
            Err(source) => {
                return Err(NetnsError::Io {
                    path,
                    what: "creating the mount point",
                    source,
                })
            }
        }
        let target = path.clone();
        let pinned = std::thread::Builder::new()
            .name("rcd-netns".into())
            .spawn(move || -> Result<(), NetnsError> {
                // This thread alone moves to the new namespace, and it ends right after.
                unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                    path: target.clone(),
                    what: "unshare(CLONE_NEWNET)",
                    source,
                })?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| NetnsError::Sys {
                    path: target.clone(),
                    what: "bind-mounting the namespace",
                    source,
                })
            })
            .map_err(|source| NetnsError::Io {
                path: path.clone(),
                what: "starting a thread",
                source,
            })?
            .join()
            .unwrap_or_else(|_| Err(NetnsError::ThreadPanicked { path: path.clone() }));
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(NetNs { path })
    }

    /// An existing namespace at `path` (checked: it must be an nsfs file).
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        if !is_netns(path) {
            return Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
            });
        }
        Ok(NetNs {
            path: path.to_path_buf(),
        })
    }

    /// The path containers join (`linux.namespaces[].path`) and CNI's `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and removes the namespace; see [`remove`].
    pub fn remove(self) -> Result<(), NetnsError> {
        remove(&self.path)
    }

    /// Runs `f` on a thread that has joined this namespace (e.g. to connect to a port inside
    /// a pod, as PortForward does); the calling thread stays where it is.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let file = File::open(&self.path).map_err(|source| NetnsError::Io {
            path: self.path.clone(),
            what: "opening",
            source,
        })?;
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("rcd-in-netns".into())
            .spawn(move || -> Result<T, NetnsError> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                    path,
                    what: "setns",
                    source,
                })?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Io {
                path: self.path.clone(),
                what: "starting a thread",
                source,
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::ThreadPanicked {
                    path: self.path.clone(),
                })
            })
    }
}

/// Unmounts (every stacked mount) and unlinks a pinned namespace. Idempotent: a missing file
/// or a file that is no longer mounted is fine. The namespace itself goes away with its last
/// user (process or other mount).
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
            Err(source) => {
                return Err(NetnsError::Sys {
                    path: path.to_path_buf(),
                    what: "unmounting",
                    source,
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Io {
            path: path.to_path_buf(),
            what: "removing",
            source,
        }),
    }
}

/// Whether `path` is a namespace file (a pinned namespace that is still mounted).
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "not a file name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(NetnsError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".", "..", "a/b", "x\0"] {
            let err = check_name(bad).unwrap_err();
            assert!(err
                .to_string()
                .starts_with("invalid network namespace name"));
        }
        check_name("pod-0123abcd").unwrap();
    }

    #[test]
    fn removing_a_missing_namespace_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove(&dir.path().join("nope")).unwrap();
        assert!(!is_netns(&dir.path().join("nope")));
    }
}
