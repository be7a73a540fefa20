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

/// A read-only view of what `mounts` (a snapshot just prepared, whose upper dir is still
/// empty) show: the same files, without the upper and work dirs. Unmounting a writable
/// overlay syncs its upper filesystem, which costs tens of milliseconds on a busy host;
/// unmounting this view costs nothing, and it cannot change the snapshot.
pub fn read_only_view(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let lower = m
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .filter(|_| m.kind == "overlay");
            match lower {
                Some(lower) if lower.contains(':') => Mount {
                    kind: "overlay".into(),
                    source: m.source.clone(),
                    options: vec!["ro".into(), format!("lowerdir={lower}")],
                },
                Some(lower) => Mount {
                    kind: "bind".into(),
                    source: lower.to_owned(),
                    options: vec!["ro".into(), "rbind".into()],
                },
                None => {
                    let mut options: Vec<String> = m
                        .options
                        .iter()
                        .filter(|o| *o != "rw" && *o != "ro")
                        .cloned()
                        .collect();
                    options.insert(0, "ro".into());
                    Mount {
                        options,
                        ..m.clone()
                    }
                }
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn the_view_of_a_writable_overlay_has_its_lower_dirs_only() {
        let v = read_only_view(&[m(
            "overlay",
            "overlay",
            &[
                "workdir=/s/3/work",
                "upperdir=/s/3/fs",
                "lowerdir=/s/2/fs:/s/1/fs",
            ],
        )]);
        assert_eq!(
            v,
            vec![m("overlay", "overlay", &["ro", "lowerdir=/s/2/fs:/s/1/fs"])]
        );
    }

    #[test]
    fn the_view_over_one_layer_is_a_read_only_bind_of_it() {
        let v = read_only_view(&[m(
            "overlay",
            "overlay",
            &["workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs"],
        )]);
        assert_eq!(v, vec![m("bind", "/s/1/fs", &["ro", "rbind"])]);
    }

    #[test]
    fn the_view_of_a_bind_mount_is_read_only() {
        let v = read_only_view(&[m("bind", "/s/1/fs", &["rw", "rbind"])]);
        assert_eq!(v, vec![m("bind", "/s/1/fs", &["ro", "rbind"])]);
    }
}
