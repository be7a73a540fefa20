//! Mount specs (containerd's `Mount`: type, source, options) and mounting them.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use tracing::warn;

/// One mount, as containerd's `mount.Mount`: `kind` is the filesystem type (`overlay`,
/// `bind`), `options` the comma-separated options split (`ro`, `rbind`, `lowerdir=…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Mount {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Mounts `mounts` in order on `target` (an existing directory). On error, what was mounted
/// is unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> io::Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "mounting {} {} on {}: {e}",
                    m.kind,
                    m.source,
                    target.display()
                ),
            ));
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> io::Result<()> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    let is_bind = m.kind == "bind" || flags.contains(MsFlags::MS_BIND);
    if is_bind {
        flags |= MsFlags::MS_BIND;
        mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None::<&str>,
        )?;
        // bind mounts ignore most flags on creation: apply them with a remount
        let extra = flags
            & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
        if !extra.is_empty() {
            if let Err(e) = mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            ) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(e.into());
            }
        }
    } else {
        let data = data.join(",");
        mount(
            Some(m.source.as_str()),
            target,
            Some(m.kind.as_str()),
            flags,
            Some(data.as_str()),
        )?;
    }
    Ok(())
}

/// Unmounts `target` (lazily if busy).
pub fn unmount(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Ok(umount2(target, MntFlags::MNT_DETACH)?),
        Err(e) => Err(e.into()),
    }
}

/// Mounts on creation, unmounts on drop (also while unwinding from a panic).
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    count: usize,
}

impl MountGuard {
    pub fn new(mounts: &[Mount], target: &Path) -> io::Result<MountGuard> {
        mount_all(mounts, target)?;
        Ok(MountGuard {
            target: target.to_owned(),
            count: mounts.len(),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..self.count {
            if let Err(e) = unmount(&self.target) {
                warn!(target = %self.target.display(), error = %e, "unmount failed");
            }
        }
    }
}
