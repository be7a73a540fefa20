//! Mounts: the defaults every container gets, and the request's binds, tmpfs and volumes.

use super::SpecError;
use oci_spec::runtime::Mount;
use std::path::{Component, Path, PathBuf};

/// Bind-mount propagation, as `--mount bind-propagation=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Private,
    Rprivate,
    Shared,
    Rshared,
    Slave,
    Rslave,
}

impl Propagation {
    pub fn parse(s: &str) -> Result<Propagation, String> {
        Ok(match s {
            "private" => Propagation::Private,
            "rprivate" => Propagation::Rprivate,
            "shared" => Propagation::Shared,
            "rshared" => Propagation::Rshared,
            "slave" => Propagation::Slave,
            "rslave" => Propagation::Rslave,
            other => {
                return Err(format!(
                    "unknown propagation {other:?} (expected private, rprivate, shared, \
                     rshared, slave or rslave)"
                ))
            }
        })
    }

    fn option(self) -> &'static str {
        match self {
            Propagation::Private => "private",
            Propagation::Rprivate => "rprivate",
            Propagation::Shared => "shared",
            Propagation::Rshared => "rshared",
            Propagation::Slave => "slave",
            Propagation::Rslave => "rslave",
        }
    }
}

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host path (file or directory), recursively bind-mounted.
    Bind {
        source: PathBuf,
        propagation: Propagation,
    },
    /// A fresh tmpfs; `size` in bytes (unlimited: half of RAM, the kernel's default),
    /// `mode` of its root.
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
    /// A named volume the caller has yet to resolve to a host directory
    /// ([`MountRequest::resolve_volume`]); [`super::generate`] refuses an unresolved one.
    Volume { name: String },
}

/// One mount of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    pub destination: String,
    pub source: MountSource,
    pub readonly: bool,
    /// Extra mount options passed through (`nosuid`, `noexec`, `nodev`, ...).
    pub options: Vec<String>,
}

impl MountRequest {
    pub fn bind(source: impl Into<PathBuf>, destination: &str, readonly: bool) -> MountRequest {
        MountRequest {
            destination: destination.to_owned(),
            source: MountSource::Bind {
                source: source.into(),
                propagation: Propagation::default(),
            },
            readonly,
            options: Vec::new(),
        }
    }

    pub fn tmpfs(destination: &str, size: Option<u64>) -> MountRequest {
        MountRequest {
            destination: destination.to_owned(),
            source: MountSource::Tmpfs { size, mode: None },
            readonly: false,
            options: Vec::new(),
        }
    }

    /// The volume's name, when this is a named volume.
    pub fn volume_name(&self) -> Option<&str> {
        match &self.source {
            MountSource::Volume { name } => Some(name),
            _ => None,
        }
    }

    /// Turns a named volume into a bind mount of `host_dir`.
    pub fn resolve_volume(&mut self, host_dir: impl Into<PathBuf>) {
        if let MountSource::Volume { .. } = self.source {
            self.source = MountSource::Bind {
                source: host_dir.into(),
                propagation: Propagation::default(),
            };
        }
    }

    /// Docker's `-v` short form: `HOST:CTR[:ro|rw][,...]` (HOST absolute: a bind; else a
    /// volume name) or `CTR` alone (an anonymous volume: the name is empty).
    pub fn parse_volume_flag(s: &str) -> Result<MountRequest, SpecError> {
        let bad = |reason: String| SpecError::InvalidMountFlag {
            flag: s.to_owned(),
            reason,
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [dst] => ("", *dst, ""),
            [src, dst] => (*src, *dst, ""),
            [src, dst, opts] => (*src, *dst, *opts),
            _ => return Err(bad("expected HOST:CONTAINER[:OPTIONS]".into())),
        };
        let mut m = MountRequest {
            destination: dst.to_owned(),
            source: if src.starts_with('/') {
                MountSource::Bind {
                    source: src.into(),
                    propagation: Propagation::default(),
                }
            } else {
                MountSource::Volume {
                    name: src.to_owned(),
                }
            },
            readonly: false,
            options: Vec::new(),
        };
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => m.readonly = true,
                "rw" => m.readonly = false,
                p => {
                    let prop = Propagation::parse(p).map_err(|_| {
                        bad(format!(
                            "unknown option {p:?} (expected ro, rw or a propagation)"
                        ))
                    })?;
                    match &mut m.source {
                        MountSource::Bind { propagation, .. } => *propagation = prop,
                        _ => return Err(bad("propagation applies to bind mounts only".into())),
                    }
                }
            }
        }
        check_destination(&m.destination).map_err(bad)?;
        Ok(m)
    }

    /// Docker's `--mount type=bind|volume|tmpfs,source=..,target=..[,readonly]
    /// [,bind-propagation=..][,tmpfs-size=..][,tmpfs-mode=..]`.
    pub fn parse_mount_flag<'a>(s: &'a str) -> Result<MountRequest, SpecError> {
        let bad = |reason: String| SpecError::InvalidMountFlag {
            flag: s.to_owned(),
            reason,
        };
        let mut typ = "volume".to_string();
        let mut src: Option<String> = None;
        let mut dst: Option<String> = None;
        let mut readonly = false;
        let mut propagation = None;
        let mut size = None;
        let mut mode = None;
        for field in s.split(',').filter(|f| !f.is_empty()) {
            let (k, v) = match field.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (field, None),
            };
            let need = |v: Option<&'a str>| v.ok_or_else(|| bad(format!("{k} needs a value")));
            match k {
                "type" => typ = need(v)?.to_owned(),
                "source" | "src" => src = Some(need(v)?.to_owned()),
                "target" | "destination" | "dst" => dst = Some(need(v)?.to_owned()),
                "readonly" | "ro" => {
                    readonly = match v {
                        None | Some("true") | Some("1") => true,
                        Some("false") | Some("0") => false,
                        Some(x) => return Err(bad(format!("readonly={x} is not a boolean"))),
                    }
                }
                "bind-propagation" => {
                    propagation = Some(Propagation::parse(need(v)?).map_err(bad)?)
                }
                "tmpfs-size" => {
                    size = Some(
                        super::resources::parse_size(need(v)?)
                            .map_err(|e| bad(format!("tmpfs-size: {e}")))?,
                    )
                }
                "tmpfs-mode" => {
                    let v = need(v)?;
                    mode = Some(
                        u32::from_str_radix(v, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| bad(format!("tmpfs-mode {v:?} is not an octal mode")))?,
                    )
                }
                other => return Err(bad(format!("unknown field {other:?}"))),
            }
        }
        let dst = dst.ok_or_else(|| bad("target is missing".into()))?;
        let source = match typ.as_str() {
            "bind" => MountSource::Bind {
                source: src
                    .ok_or_else(|| bad("a bind mount needs a source".into()))?
                    .into(),
                propagation: propagation.unwrap_or_default(),
            },
            "volume" => MountSource::Volume {
                name: src.unwrap_or_default(),
            },
            "tmpfs" => {
                if src.is_some() {
                    return Err(bad("a tmpfs mount takes no source".into()));
                }
                MountSource::Tmpfs { size, mode }
            }
            other => {
                return Err(bad(format!(
                    "unknown type {other:?} (expected bind, volume or tmpfs)"
                )))
            }
        };
        if propagation.is_some() && typ != "bind" {
            return Err(bad("bind-propagation applies to bind mounts only".into()));
        }
        if (size.is_some() || mode.is_some()) && typ != "tmpfs" {
            return Err(bad(
                "tmpfs-size and tmpfs-mode apply to tmpfs mounts only".into()
            ));
        }
        check_destination(&dst).map_err(bad)?;
        Ok(MountRequest {
            destination: dst,
            source,
            readonly,
            options: Vec::new(),
        })
    }
}

/// A container path must be absolute and must not climb with `..`.
pub fn check_destination(dst: &str) -> Result<(), String> {
    if !dst.starts_with('/') {
        return Err(format!("destination {dst:?} is not an absolute path"));
    }
    if Path::new(dst)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(format!("destination {dst:?} contains \"..\""));
    }
    Ok(())
}

pub(crate) fn mount(dst: &str, typ: &str, src: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dst.into());
    m.set_typ(Some(typ.to_owned()));
    m.set_source(Some(src.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The mounts every container gets (containerd's defaults): `/proc`, a tmpfs `/dev`, a
/// private devpts, `/dev/shm` of `shm_size` bytes, `/dev/mqueue`, and `/sys` with the
/// cgroup tree, read-only unless `privileged`.
pub fn default_mounts(shm_size: u64, privileged: bool) -> Vec<Mount> {
    let shm = format!("size={}k", shm_size.div_ceil(1024));
    let sys_ro: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let cgroup_ro: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev", "relatime", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "relatime", "ro"]
    };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", sys_ro),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroup_ro),
    ]
}

/// The OCI mount for one request mount (volumes must be resolved first).
pub fn to_oci(m: &MountRequest) -> Result<Mount, SpecError> {
    let bad = |reason: String| SpecError::InvalidMount {
        destination: m.destination.clone(),
        reason,
    };
    check_destination(&m.destination).map_err(bad)?;
    let mut options: Vec<String> = Vec::new();
    let mut out = Mount::default();
    out.set_destination(m.destination.clone().into());
    match &m.source {
        MountSource::Bind {
            source,
            propagation,
        } => {
            if !source.is_absolute() {
                return Err(bad(format!(
                    "source {} is not an absolute path",
                    source.display()
                )));
            }
            std::fs::symlink_metadata(source)
                .map_err(|e| bad(format!("source {}: {e}", source.display())))?;
            out.set_typ(Some("bind".into()));
            out.set_source(Some(source.clone()));
            options.push("rbind".into());
            options.push(propagation.option().into());
        }
        MountSource::Tmpfs { size, mode } => {
            out.set_typ(Some("tmpfs".into()));
            out.set_source(Some("tmpfs".into()));
            options.extend(["nosuid".into(), "nodev".into(), "noexec".into()]);
            if let Some(s) = size {
                options.push(format!("size={s}"));
            }
            options.push(format!("mode={:o}", mode.unwrap_or(0o1777)));
        }
        MountSource::Volume { name } => {
            return Err(bad(format!(
                "named volume {name:?} was not resolved to a host directory"
            )))
        }
    }
    options.push(if m.readonly { "ro" } else { "rw" }.into());
    for o in &m.options {
        if o.contains(',') || o.is_empty() {
            return Err(bad(format!("option {o:?} is not a single mount option")));
        }
        options.push(o.clone());
    }
    out.set_options(Some(options));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_parse() {
        let m = MountRequest::parse_volume_flag("/src:/dst:ro").unwrap();
        assert_eq!(m, MountRequest::bind("/src", "/dst", true));
        let m = MountRequest::parse_volume_flag("data:/var/lib/data").unwrap();
        assert_eq!(m.volume_name(), Some("data"));
        let m = MountRequest::parse_volume_flag("/anon").unwrap();
        assert_eq!(m.volume_name(), Some(""));
        let m = MountRequest::parse_volume_flag("/a:/b:rw,rshared").unwrap();
        assert_eq!(
            m.source,
            MountSource::Bind {
                source: "/a".into(),
                propagation: Propagation::Rshared
            }
        );
    }

    #[test]
    fn bad_volume_flags_say_why() {
        for (flag, why) in [
            ("/a:b", "not an absolute path"),
            ("/a:/b:rx", "unknown option \"rx\""),
            ("/a:/b:c:d", "expected HOST:CONTAINER"),
            ("/a:/x/../etc", "contains \"..\""),
            ("vol:/b:shared", "bind mounts only"),
        ] {
            let e = MountRequest::parse_volume_flag(flag)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{flag}: {e}");
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }

    #[test]
    fn mount_flags_parse() {
        let m = MountRequest::parse_mount_flag(
            "type=bind,source=/h,target=/c,readonly,bind-propagation=rslave",
        )
        .unwrap();
        assert!(m.readonly);
        assert_eq!(
            m.source,
            MountSource::Bind {
                source: "/h".into(),
                propagation: Propagation::Rslave
            }
        );
        let m = MountRequest::parse_mount_flag("type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=700")
            .unwrap();
        assert_eq!(
            m.source,
            MountSource::Tmpfs {
                size: Some(64 << 20),
                mode: Some(0o700)
            }
        );
        let m = MountRequest::parse_mount_flag("src=data,target=/d").unwrap();
        assert_eq!(m.volume_name(), Some("data"));
    }

    #[test]
    fn bad_mount_flags_say_why() {
        for (flag, why) in [
            ("type=bind,target=/c", "needs a source"),
            ("type=bind,source=/h", "target is missing"),
            ("type=nfs,target=/c", "unknown type \"nfs\""),
            ("type=tmpfs,source=x,target=/c", "takes no source"),
            ("type=tmpfs,target=/c,tmpfs-mode=999", "not an octal mode"),
            ("type=tmpfs,target=/c,tmpfs-size=lots", "tmpfs-size"),
            (
                "type=volume,target=/c,bind-propagation=shared",
                "bind mounts only",
            ),
            (
                "type=bind,source=/a,target=/c,tmpfs-size=1m",
                "tmpfs mounts only",
            ),
            ("type=bind,source=/a,target=c", "not an absolute path"),
            (
                "type=bind,source=/a,target=/c,color=red",
                "unknown field \"color\"",
            ),
            (
                "type=bind,source=/a,target=/c,readonly=maybe",
                "not a boolean",
            ),
            ("type=bind,source,target=/c", "source needs a value"),
        ] {
            let e = MountRequest::parse_mount_flag(flag)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{flag}: {e}");
        }
    }

    #[test]
    fn binds_and_tmpfs_become_oci_mounts() {
        let d = tempfile::tempdir().unwrap();
        let m = to_oci(&MountRequest::bind(d.path(), "/data", true)).unwrap();
        assert_eq!(m.typ().as_deref(), Some("bind"));
        assert_eq!(m.options().as_ref().unwrap(), &["rbind", "private", "ro"]);
        let m = to_oci(&MountRequest::tmpfs("/run", Some(1 << 20))).unwrap();
        assert_eq!(
            m.options().as_ref().unwrap(),
            &[
                "nosuid",
                "nodev",
                "noexec",
                "size=1048576",
                "mode=1777",
                "rw"
            ]
        );
    }

    #[test]
    fn bad_request_mounts_are_refused() {
        let e = to_oci(&MountRequest::bind("/nonexistent-src", "/d", false)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-src"), "{e}");
        let e = to_oci(&MountRequest::bind("/tmp", "relative", false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount at \"relative\": destination \"relative\" is not an absolute path"
        );
        let e = to_oci(&MountRequest::bind("tmp", "/d", false)).unwrap_err();
        assert!(
            e.to_string().contains("source tmp is not an absolute path"),
            "{e}"
        );
        let mut v = MountRequest::parse_volume_flag("data:/d").unwrap();
        let e = to_oci(&v).unwrap_err();
        assert!(
            e.to_string()
                .contains("named volume \"data\" was not resolved"),
            "{e}"
        );
        v.resolve_volume("/tmp");
        assert!(to_oci(&v).is_ok());
        let mut t = MountRequest::tmpfs("/t", None);
        t.options.push("noexec,suid".into());
        assert!(to_oci(&t)
            .unwrap_err()
            .to_string()
            .contains("single mount option"));
    }

    #[test]
    fn default_mounts_are_read_only_where_it_matters() {
        let m = default_mounts(64 << 20, false);
        let sys = m
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
        let shm = m
            .iter()
            .find(|m| m.destination() == Path::new("/dev/shm"))
            .unwrap();
        assert!(shm
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=65536k".to_string()));
        let pts = m
            .iter()
            .find(|m| m.destination() == Path::new("/dev/pts"))
            .unwrap();
        assert!(pts
            .options()
            .as_ref()
            .unwrap()
            .contains(&"newinstance".to_string()));
        let m = default_mounts(64 << 20, true);
        let sys = m
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    }
}
