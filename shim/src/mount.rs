//! Mounting the rootfs containerd hands over in Create (usually one overlay) on
//! `<bundle>/rootfs`, and taking it down again.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::Path;

use crate::Error;

/// Splits mount options into flags and the data string the filesystem gets.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = vec![];
    for o in options {
        let (set, f) = match o.as_str() {
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "bind" => (true, MsFlags::MS_BIND),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nodev" => (true, MsFlags::MS_NODEV),
            "dev" => (false, MsFlags::MS_NODEV),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (true, MsFlags::MS_DIRSYNC),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "defaults" => (true, MsFlags::empty()),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        if set {
            flags |= f;
        } else {
            flags &= !f;
        }
    }
    (flags, data.join(","))
}

pub fn mount_rootfs(
    mounts: &[containerd_shim_protos::types::mount::Mount],
    rootfs: &Path,
) -> Result<(), Error> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(rootfs)
        .map_err(|e| Error::Io(format!("creating {}", rootfs.display()), e))?;
    for m in mounts {
        let (flags, data) = parse_options(&m.options);
        let fstype = if m.type_ == "bind" {
            None
        } else {
            Some(m.type_.as_str())
        };
        let data = (!data.is_empty()).then_some(data.as_str());
        let what = |e: nix::Error| {
            Error::Failed(format!(
                "mounting {} ({}) on {}: {e}",
                m.source,
                m.type_,
                rootfs.display()
            ))
        };
        mount(Some(m.source.as_str()), rootfs, fstype, flags, data).map_err(what)?;
        // The kernel ignores every flag but MS_REC on a new bind mount: remount for ro.
        if fstype.is_none() && flags.contains(MsFlags::MS_RDONLY) {
            mount(
                None::<&str>,
                rootfs,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(what)?;
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `rootfs`; a rootfs that is not mounted is fine.
pub fn unmount_rootfs(rootfs: &Path) {
    for _ in 0..16 {
        if umount2(rootfs, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_from_data() {
        let o: Vec<String> = ["ro", "nosuid", "lowerdir=/a:/b", "upperdir=/u", "index=off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, d) = parse_options(&o);
        assert_eq!(f, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(d, "lowerdir=/a:/b,upperdir=/u,index=off");
        let (f, d) = parse_options(&["rbind".into(), "ro".into(), "rw".into()]);
        assert_eq!(f, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(d, "");
    }
}
