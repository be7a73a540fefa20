//! Devices: the cgroup allow-list every container gets, host devices passed in by path, and
//! all host devices for privileged containers.

use super::SpecError;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A host device to expose: `--device HOST[:CONTAINER][:PERMS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    pub host_path: String,
    /// Defaults to `host_path`.
    pub container_path: Option<String>,
    /// Any of `r`, `w`, `m`; defaults to `rwm`.
    pub permissions: Option<String>,
}

impl DeviceRequest {
    pub fn parse(s: &str) -> Result<DeviceRequest, SpecError> {
        let bad = |reason: String| SpecError::InvalidDevice {
            device: s.to_owned(),
            reason,
        };
        let parts: Vec<&str> = s.split(':').collect();
        let is_perms = |p: &str| !p.is_empty() && p.chars().all(|c| "rwm".contains(c));
        let (host, ctr, perms) = match parts.as_slice() {
            [h] => (*h, None, None),
            [h, p] if is_perms(p) => (*h, None, Some(*p)),
            [h, c] => (*h, Some(*c), None),
            [h, c, p] => (*h, Some(*c), Some(*p)),
            _ => return Err(bad("expected HOST[:CONTAINER][:PERMISSIONS]".into())),
        };
        let d = DeviceRequest {
            host_path: host.to_owned(),
            container_path: ctr.map(str::to_owned),
            permissions: perms.map(str::to_owned),
        };
        d.check().map_err(bad)?;
        Ok(d)
    }

    fn check(&self) -> Result<(), String> {
        if !self.host_path.starts_with('/') {
            return Err(format!("{:?} is not an absolute path", self.host_path));
        }
        if let Some(c) = &self.container_path {
            if !c.starts_with('/') {
                return Err(format!("{c:?} is not an absolute path"));
            }
        }
        if let Some(p) = &self.permissions {
            if p.is_empty() || !p.chars().all(|c| "rwm".contains(c)) {
                return Err(format!("permissions {p:?} are not a mix of r, w and m"));
            }
        }
        Ok(())
    }
}

pub(crate) fn cgroup_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(typ);
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_owned()));
    r
}

/// Deny everything, then allow what a container always needs: /dev/null, zero, full,
/// random, urandom, tty, console, the ptys of its own devpts and ptmx. The runtime creates
/// these nodes itself.
pub fn default_cgroup_rules() -> Vec<LinuxDeviceCgroup> {
    let c = Some(LinuxDeviceType::C);
    let mut v = vec![cgroup_rule(false, None, None, None, "rwm")];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        v.push(cgroup_rule(true, c, Some(major), Some(minor), "rwm"));
    }
    // /dev/pts/N of the container's own devpts instance
    v.push(cgroup_rule(true, c, Some(136), None, "rwm"));
    v
}

fn major(dev: u64) -> i64 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as i64
}

fn minor(dev: u64) -> i64 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as i64
}

/// The spec device and the cgroup rule for one host device node.
pub fn host_device(req: &DeviceRequest) -> Result<(LinuxDevice, LinuxDeviceCgroup), SpecError> {
    let bad = |reason: String| SpecError::InvalidDevice {
        device: req.host_path.clone(),
        reason,
    };
    req.check().map_err(bad)?;
    let md = std::fs::metadata(&req.host_path).map_err(|e| bad(e.to_string()))?;
    let typ = if md.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if md.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(bad("not a device node".into()));
    };
    let (maj, min) = (major(md.rdev()), minor(md.rdev()));
    let mut d = LinuxDevice::default();
    d.set_path(
        req.container_path
            .clone()
            .unwrap_or_else(|| req.host_path.clone())
            .into(),
    );
    d.set_typ(typ);
    d.set_major(maj);
    d.set_minor(min);
    d.set_file_mode(Some(md.mode() & 0o777));
    d.set_uid(Some(md.uid()));
    d.set_gid(Some(md.gid()));
    let perms = req.permissions.clone().unwrap_or_else(|| "rwm".into());
    Ok((
        d,
        cgroup_rule(true, Some(typ), Some(maj), Some(min), &perms),
    ))
}

/// Every device node under the host's /dev (what a privileged container sees), skipping
/// what the container mounts itself (pts, shm, mqueue) and the console.
pub fn all_host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
}

fn walk(dir: &Path, out: &mut Vec<LinuxDevice>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ft.is_dir() {
            if dir == Path::new("/dev") && ["pts", "shm", "mqueue", "fd"].contains(&name.as_ref()) {
                continue;
            }
            walk(&path, out);
        } else if (ft.is_char_device() || ft.is_block_device())
            && !(dir == Path::new("/dev") && ["console", "ptmx", "tty"].contains(&name.as_ref()))
        {
            let req = DeviceRequest {
                host_path: path.to_string_lossy().into_owned(),
                container_path: None,
                permissions: None,
            };
            if let Ok((d, _)) = host_device(&req) {
                out.push(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flags_parse() {
        let d = DeviceRequest::parse("/dev/fuse").unwrap();
        assert_eq!((d.container_path, d.permissions), (None, None));
        let d = DeviceRequest::parse("/dev/null:/dev/mynull:rw").unwrap();
        assert_eq!(d.container_path.as_deref(), Some("/dev/mynull"));
        assert_eq!(d.permissions.as_deref(), Some("rw"));
        let d = DeviceRequest::parse("/dev/null:r").unwrap();
        assert_eq!(d.permissions.as_deref(), Some("r"));
    }

    #[test]
    fn bad_device_flags_say_why() {
        for (flag, why) in [
            ("dev/null", "not an absolute path"),
            ("/dev/null:mynull", "not an absolute path"),
            ("/dev/null:/dev/x:rx", "not a mix of r, w and m"),
            ("/a:/b:r:x", "expected HOST"),
        ] {
            let e = DeviceRequest::parse(flag).unwrap_err().to_string();
            assert!(e.contains(why), "{flag}: {e}");
        }
    }

    #[test]
    fn host_devices_are_read_from_the_node() {
        let (d, rule) = host_device(&DeviceRequest::parse("/dev/null").unwrap()).unwrap();
        assert_eq!((d.major(), d.minor()), (1, 3));
        assert_eq!(d.typ(), LinuxDeviceType::C);
        assert_eq!(rule.access().as_deref(), Some("rwm"));
        assert!(rule.allow());
    }

    #[test]
    fn non_devices_and_missing_paths_are_refused() {
        let e = host_device(&DeviceRequest::parse("/etc/hostname").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a device node"), "{e}");
        let e = host_device(&DeviceRequest::parse("/dev/nonexistent-dev").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/nonexistent-dev"), "{e}");
    }

    #[test]
    fn the_default_rules_deny_first() {
        let r = default_cgroup_rules();
        assert!(!r[0].allow());
        assert!(r.iter().skip(1).all(|r| r.allow()));
    }

    #[test]
    fn host_devices_include_null() {
        let all = all_host_devices();
        assert!(all.iter().any(|d| d.path() == Path::new("/dev/null")));
    }
}
