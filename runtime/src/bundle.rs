//! Loading and checking a bundle before anything is created, so that a bad `config.json` is
//! reported by field and leaves nothing behind.

use oci_spec::runtime::Spec;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {} does not exist", .0.display())]
    NoBundle(PathBuf),
    #[error("bundle {} has no config.json", .0.display())]
    NoConfig(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {}: field `{field}`: {message}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("invalid {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("invalid {}: field `{field}` is required", path.display())]
    Missing { path: PathBuf, field: &'static str },
    #[error("invalid {}: ociVersion {version:?} is not supported (need 1.x)", path.display())]
    Version { path: PathBuf, version: String },
    #[error("rootfs {} does not exist or is not a directory (config.json root.path)", .0.display())]
    NoRootfs(PathBuf),
    #[error("mount source {} for {} does not exist", src.display(), destination.display())]
    NoMountSource { src: PathBuf, destination: PathBuf },
    #[error(
        "--systemd-cgroup needs systemd running as init on this host (no /run/systemd/system)"
    )]
    NoSystemd,
    #[error("with --systemd-cgroup, linux.cgroupsPath must be \"slice:prefix:name\", not {0:?}")]
    SystemdCgroupsPath(String),
    #[error(
        "cannot set oom_score_adj to {requested}: it is lower than this process's own ({current}) \
         and lowering it needs CAP_SYS_RESOURCE, which this process lacks"
    )]
    OomScoreAdj { requested: i32, current: i32 },
}

/// Where [`libcontainer_compat`]'s rewritten config lives for container `id`: beside the
/// container directories in runr's root, under a name no container id can take (`@`).
pub fn compat_bundle_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!("bundle@{id}"))
}

/// The spec libcontainer 0.7 must be given so that it does what runc does with `spec`, or `None`
/// when it reads `spec` correctly as it is. libcontainer reads `config.json` from the bundle
/// itself, so a changed spec is written to [`compat_bundle_dir`] and that is passed instead.
///
/// - seccomp `SCMP_CMP_MASKED_EQ`: OCI (and libseccomp, runc) take `value` as the mask and
///   `valueTwo` as the datum; libcontainer takes them the other way round, so Docker's rule
///   "clone allowed when no namespace flag is set" became "clone always allowed".
/// - `process.noNewPrivileges: false`: libcontainer treats any present value as set and then
///   loads the seccomp filter at a point where loading fails; absent means the same as false.
/// - relative `root.path` and bind-mount sources are made absolute (they are relative to the
///   real bundle, not to the rewritten one).
/// - with `own_seccomp` (runr installs the filter itself, `crate::seccomp`), `linux.seccomp` is
///   taken out, and CAP_SYS_ADMIN put in the permitted set when the plan borrows it.
pub fn libcontainer_compat(
    spec: &Spec,
    bundle: &Path,
    own_seccomp: Option<crate::seccomp::Privilege>,
) -> Option<Spec> {
    use oci_spec::runtime::LinuxSeccompOperator;
    let mut out = spec.clone();
    let mut changed = false;
    if let Some(privilege) = own_seccomp {
        if let Some(l) = out.linux_mut().as_mut() {
            l.set_seccomp(None);
            changed = true;
        }
        if privilege == (crate::seccomp::Privilege::Borrow { added: true }) {
            if let Some(p) = out.process_mut().as_mut() {
                crate::seccomp::lend_sys_admin(p);
            }
        }
    }
    if let Some(seccomp) = out
        .linux_mut()
        .as_mut()
        .and_then(|l| l.seccomp_mut().as_mut())
    {
        let mut syscalls = seccomp.syscalls().clone();
        for sc in syscalls.iter_mut().flatten() {
            let mut args = sc.args().clone();
            for arg in args.iter_mut().flatten() {
                if arg.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    let mask = arg.value();
                    let datum = arg.value_two().unwrap_or(0);
                    if let Ok(swapped) = oci_spec::runtime::LinuxSeccompArgBuilder::default()
                        .index(arg.index())
                        .value(datum)
                        .value_two(mask)
                        .op(arg.op())
                        .build()
                    {
                        *arg = swapped;
                        changed = true;
                    }
                }
            }
            sc.set_args(args);
        }
        seccomp.set_syscalls(syscalls);
    }
    if let Some(p) = out.process_mut().as_mut() {
        if p.no_new_privileges() == Some(false) {
            p.set_no_new_privileges(None);
            changed = true;
        }
    }
    if let Some(mounts) = cgroup_v1_binds(&out, &host_cgroup_v1_mounts()) {
        out.set_mounts(Some(mounts));
        changed = true;
    }
    if !changed {
        return None;
    }
    if let Some(root) = out.root_mut().as_mut() {
        if root.path().is_relative() {
            let abs = bundle.join(root.path());
            root.set_path(abs);
        }
    }
    if let Some(mounts) = out.mounts_mut().as_mut() {
        for m in mounts.iter_mut() {
            let relative = m.source().as_ref().is_some_and(|s| s.is_relative());
            let bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
            if relative && bind {
                let abs = bundle.join(m.source().as_ref().unwrap());
                m.set_source(Some(abs));
            }
        }
    }
    Some(out)
}

/// The cgroup v1 hierarchies mounted under /sys/fs/cgroup (none on a pure v2 host).
fn host_cgroup_v1_mounts() -> Vec<PathBuf> {
    if matches!(
        libcgroups::common::get_cgroup_setup(),
        Ok(libcgroups::common::CgroupSetup::Unified)
    ) {
        return vec![];
    }
    libcgroups::v1::util::list_subsystem_mount_points()
        .map(|v| {
            v.into_iter()
                .filter(|p| p.starts_with("/sys/fs/cgroup"))
                .collect()
        })
        .unwrap_or_default()
}

/// The controllers libcontainer 0.7's v1 manager puts a container into: only their
/// hierarchies have the container's directory to bind.
const MANAGED_V1: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// The mounts that replace a `cgroup` mount when the container joins an existing PID
/// namespace on a cgroup v1 host, or `None` when the spec needs no change.
///
/// libcontainer 0.7 finds the cgroups to show such a container by reading `/proc/<pid>` with
/// the pid the container has inside the joined namespace, on the host's procfs: that is
/// another process or none ("failed to prepare rootfs", seen with every pod that shares its
/// PID namespace). What it means to mount is what runc mounts: a tmpfs with each hierarchy's
/// directory of the container (`linux.cgroupsPath`, created before the rootfs is prepared)
/// bound on it; co-mounted hierarchies (`cpu,cpuacct`) are bound under each name as well, in
/// place of runc's symlinks.
pub fn cgroup_v1_binds(
    spec: &Spec,
    host_mounts: &[PathBuf],
) -> Option<Vec<oci_spec::runtime::Mount>> {
    use oci_spec::runtime::{LinuxNamespaceType, MountBuilder};
    let linux = spec.linux().as_ref()?;
    let namespaces = linux.namespaces().as_ref()?;
    let joins_pid = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_some());
    let own_cgroup_ns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Cgroup);
    let cgroups_path = linux.cgroups_path().as_ref()?;
    if !joins_pid
        || own_cgroup_ns
        || host_mounts.is_empty()
        || !cgroups_path.is_absolute()
        || cgroups_path.to_string_lossy().contains(':')
    {
        return None;
    }
    let mounts = spec.mounts().as_ref()?;
    let at = mounts
        .iter()
        .position(|m| m.typ().as_deref() == Some("cgroup"))?;
    let cg = &mounts[at];
    let dest = cg.destination().clone();
    let ro = cg
        .options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|o| o == "ro"));
    let mut out: Vec<oci_spec::runtime::Mount> = mounts[..at].to_vec();
    let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    out.push(
        MountBuilder::default()
            .destination(dest.clone())
            .typ("tmpfs")
            .source("tmpfs")
            .options(opts(&["noexec", "nosuid", "nodev", "mode=755"]))
            .build()
            .ok()?,
    );
    let rel = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    for hm in host_mounts {
        let Some(name) = hm.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let controllers: Vec<&str> = name.split(',').collect();
        if !controllers.iter().any(|c| MANAGED_V1.contains(c)) {
            continue;
        }
        let mut names = vec![name];
        if controllers.len() > 1 {
            names.extend(controllers.iter().copied());
        }
        for n in names {
            let mut o = vec!["rbind", "nosuid", "noexec", "nodev"];
            if ro {
                o.push("ro");
            }
            out.push(
                MountBuilder::default()
                    .destination(dest.join(n))
                    .typ("bind")
                    .source(hm.join(rel))
                    .options(opts(&o))
                    .build()
                    .ok()?,
            );
        }
    }
    out.extend(mounts[at + 1..].iter().cloned());
    Some(out)
}

/// Parses `config.json` of `bundle`, naming the offending field on error.
pub fn load_spec(bundle: &Path) -> Result<Spec, BundleError> {
    if !bundle.is_dir() {
        return Err(BundleError::NoBundle(bundle.to_path_buf()));
    }
    let path = bundle.join("config.json");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::NoConfig(bundle.to_path_buf()))
        }
        Err(source) => return Err(BundleError::Read { path, source }),
    };
    let mut de = serde_json::Deserializer::from_reader(BufReader::new(file));
    let spec: Spec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." || inner.is_syntax() || inner.is_eof() {
            BundleError::Syntax {
                path: path.clone(),
                message: inner.to_string(),
            }
        } else {
            BundleError::Field {
                path: path.clone(),
                field,
                message: inner.to_string(),
            }
        }
    })?;
    check_spec(bundle, &path, &spec)?;
    Ok(spec)
}

fn check_spec(bundle: &Path, path: &Path, spec: &Spec) -> Result<(), BundleError> {
    if !spec.version().starts_with("1.") {
        return Err(BundleError::Version {
            path: path.to_path_buf(),
            version: spec.version().clone(),
        });
    }
    let missing = |field| BundleError::Missing {
        path: path.to_path_buf(),
        field,
    };
    let root = spec.root().as_ref().ok_or_else(|| missing("root"))?;
    let process = spec.process().as_ref().ok_or_else(|| missing("process"))?;
    if spec.linux().is_none() {
        return Err(missing("linux"));
    }
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(BundleError::NoRootfs(rootfs));
    }
    for m in spec.mounts().iter().flatten() {
        let is_bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if let (true, Some(source)) = (is_bind, m.source()) {
            let source = if source.is_absolute() {
                source.clone()
            } else {
                bundle.join(source)
            };
            if std::fs::symlink_metadata(&source).is_err() {
                return Err(BundleError::NoMountSource {
                    src: source,
                    destination: m.destination().clone(),
                });
            }
        }
    }
    if let Some(requested) = process.oom_score_adj() {
        check_oom_score_adj(requested)?;
    }
    Ok(())
}

/// `--systemd-cgroup` hands cgroups to systemd: it must be there, and the path in its form.
pub fn check_systemd_cgroup(spec: &Spec) -> Result<(), BundleError> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Err(BundleError::NoSystemd);
    }
    if let Some(p) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    {
        let s = p.to_string_lossy();
        if s.split(':').count() != 3 {
            return Err(BundleError::SystemdCgroupsPath(s.into_owned()));
        }
    }
    Ok(())
}

/// A memory limit so low that the container's own setup processes cannot fit in it.
pub fn low_memory_limit(spec: &Spec) -> Option<i64> {
    const FLOOR: i64 = 8 << 20;
    spec.linux()
        .as_ref()?
        .resources()
        .as_ref()?
        .memory()
        .as_ref()?
        .limit()
        .filter(|&l| l > 0 && l < FLOOR)
}

/// The kernel refuses to lower oom_score_adj without CAP_SYS_RESOURCE; say so up front instead
/// of failing half-way through container setup.
pub fn check_oom_score_adj(requested: i32) -> Result<(), BundleError> {
    let current: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if requested < current && !has_cap_sys_resource() {
        return Err(BundleError::OomScoreAdj { requested, current });
    }
    Ok(())
}

fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("config.json"), config).unwrap();
        d
    }

    fn valid() -> serde_json::Value {
        serde_json::to_value(crate::spec::default_spec().unwrap()).unwrap()
    }

    #[test]
    fn accepts_default_spec() {
        let d = bundle_with(&valid().to_string());
        load_spec(d.path()).unwrap();
    }

    #[test]
    fn names_the_bad_field() {
        let mut v = valid();
        v["process"]["user"]["uid"] = serde_json::json!("root");
        let d = bundle_with(&v.to_string());
        let e = load_spec(d.path()).unwrap_err().to_string();
        assert!(e.contains("process.user.uid"), "{e}");
    }

    #[test]
    fn reports_syntax_errors_missing_parts_and_rootfs() {
        let d = bundle_with("{ not json");
        assert!(matches!(
            load_spec(d.path()),
            Err(BundleError::Syntax { .. })
        ));
        let mut v = valid();
        v.as_object_mut().unwrap().remove("process");
        let d = bundle_with(&v.to_string());
        assert!(matches!(
            load_spec(d.path()),
            Err(BundleError::Missing {
                field: "process",
                ..
            })
        ));
        let mut v = valid();
        v["root"]["path"] = serde_json::json!("nope");
        let d = bundle_with(&v.to_string());
        assert!(matches!(load_spec(d.path()), Err(BundleError::NoRootfs(_))));
        let mut v = valid();
        v["ociVersion"] = serde_json::json!("2.0.0");
        let d = bundle_with(&v.to_string());
        assert!(matches!(
            load_spec(d.path()),
            Err(BundleError::Version { .. })
        ));
    }

    #[test]
    fn missing_bundle_and_config() {
        assert!(matches!(
            load_spec(Path::new("/nonexistent/bundle")),
            Err(BundleError::NoBundle(_))
        ));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load_spec(d.path()), Err(BundleError::NoConfig(_))));
    }

    #[test]
    fn cgroup_mount_becomes_binds_only_when_a_pid_namespace_is_joined() {
        let mut v = valid();
        v["linux"]["cgroupsPath"] = serde_json::json!("/k8s/pod1/c1");
        v["mounts"] = serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/h", "options": ["rbind"]}
        ]);
        let host: Vec<PathBuf> = [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/rdma",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let own: Spec = serde_json::from_value(v.clone()).unwrap();
        assert!(cgroup_v1_binds(&own, &host).is_none());
        v["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid", "path": "/proc/42/ns/pid"}, {"type": "mount"}
        ]);
        let joined: Spec = serde_json::from_value(v.clone()).unwrap();
        assert!(cgroup_v1_binds(&joined, &[]).is_none());
        let m = cgroup_v1_binds(&joined, &host).unwrap();
        let got: Vec<(String, String, String)> = m
            .iter()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let want = [
            ("/proc", "proc", "proc"),
            ("/sys/fs/cgroup", "tmpfs", "tmpfs"),
            (
                "/sys/fs/cgroup/memory",
                "bind",
                "/sys/fs/cgroup/memory/k8s/pod1/c1",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct",
                "bind",
                "/sys/fs/cgroup/cpu,cpuacct/k8s/pod1/c1",
            ),
            (
                "/sys/fs/cgroup/cpu",
                "bind",
                "/sys/fs/cgroup/cpu,cpuacct/k8s/pod1/c1",
            ),
            (
                "/sys/fs/cgroup/cpuacct",
                "bind",
                "/sys/fs/cgroup/cpu,cpuacct/k8s/pod1/c1",
            ),
            ("/etc/hosts", "bind", "/h"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(m[2].options().as_ref().unwrap().contains(&"ro".to_string()));
        // a cgroup namespace of its own: libcontainer mounts cgroupfs itself, correctly
        v["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid", "path": "/proc/42/ns/pid"}, {"type": "cgroup"}
        ]);
        let cgns: Spec = serde_json::from_value(v).unwrap();
        assert!(cgroup_v1_binds(&cgns, &host).is_none());
    }

    #[test]
    fn compat_swaps_masked_eq_and_drops_false_no_new_privileges() {
        let mut v = valid();
        assert!(libcontainer_compat(
            &serde_json::from_value(v.clone()).unwrap(),
            Path::new("/b"),
            None
        )
        .is_none());
        v["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        });
        v["process"]["noNewPrivileges"] = serde_json::json!(false);
        v["mounts"] = serde_json::json!([
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
            {"destination": "/proc", "type": "proc", "source": "proc"}
        ]);
        let spec: Spec = serde_json::from_value(v).unwrap();
        let out = libcontainer_compat(&spec, Path::new("/b"), None).unwrap();
        let out = serde_json::to_value(&out).unwrap();
        let clone = &out["linux"]["seccomp"]["syscalls"][0]["args"][0];
        assert_eq!(clone["value"], 0);
        assert_eq!(clone["valueTwo"], 2114060288u64);
        let pers = &out["linux"]["seccomp"]["syscalls"][1]["args"][0];
        assert_eq!(pers["value"], 8);
        assert!(out["process"].get("noNewPrivileges").is_none());
        assert_eq!(out["mounts"][0]["source"], "/b/data");
        assert_eq!(out["mounts"][1]["source"], "proc");
        assert!(std::path::Path::new(out["root"]["path"].as_str().unwrap()).is_absolute());
    }
}
