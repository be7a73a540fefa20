//! The OCI runtime spec generator every container of rcd goes through (native API, CRI,
//! rnerd): an image config plus a [`ContainerRequest`] in, an `oci_spec::runtime::Spec` out,
//! with defaults as safe as containerd's (Docker's 14 capabilities, the default seccomp
//! profile, masked and read-only `/proc` and `/sys` paths, a device allow-list).
//!
//! Pure logic apart from reading the rootfs's /etc/passwd and /etc/group (confined to it),
//! the host device nodes a request names, a Localhost seccomp profile, and this process's own
//! capabilities and oom_score_adj (what a container may get at most).

pub mod caps;
pub mod devices;
pub mod mounts;
pub mod resources;
pub mod seccomp;
pub mod user;

pub use devices::DeviceRequest;
pub use mounts::{MountRequest, MountSource, Propagation};
pub use resources::Resources;
pub use user::ResolvedUser;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What went wrong building a spec; every message names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown capability {name:?}")]
    UnknownCapability { name: String },
    #[error("capability CAP_{cap} is not in rcd's own bounding set, so no container can have it")]
    CapabilityUnavailable { cap: Capability },
    #[error("invalid user {user:?}: {reason}")]
    InvalidUser { user: String, reason: String },
    #[error("unknown user {name:?}: {reason}")]
    UnknownUser { name: String, reason: String },
    #[error("unknown group {name:?}: {reason}")]
    UnknownGroup { name: String, reason: String },
    #[error("reading {path} in the rootfs: {source}")]
    ReadRootfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid cpus {value:?}: {reason}")]
    InvalidCpus { value: String, reason: String },
    #[error("invalid {what}: {reason}")]
    InvalidResource { what: String, reason: String },
    #[error("mount at {destination:?}: {reason}")]
    InvalidMount { destination: String, reason: String },
    #[error("invalid mount {flag:?}: {reason}")]
    InvalidMountFlag { flag: String, reason: String },
    #[error("sysctl {name:?}: {reason}")]
    InvalidSysctl { name: String, reason: String },
    #[error("device {device:?}: {reason}")]
    InvalidDevice { device: String, reason: String },
    #[error("invalid environment entry {entry:?}: {reason}")]
    InvalidEnv { entry: String, reason: String },
    #[error("invalid rlimit {value:?}: {reason}")]
    InvalidRlimit { value: String, reason: String },
    #[error("{namespace} namespace: {reason}")]
    InvalidNamespace { namespace: String, reason: String },
    #[error("invalid {field}: {reason}")]
    InvalidRequest { field: String, reason: String },
    #[error("{what}: rcd has no {feature} support")]
    Unsupported { what: String, feature: &'static str },
    #[error("seccomp profile {path}: {reason}")]
    SeccompProfile { path: PathBuf, reason: String },
    #[error("building the spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// How a container gets one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NamespaceMode {
    /// A namespace of its own.
    #[default]
    New,
    /// The host's (no namespace entry in the spec).
    Host,
    /// Join an existing one: `/proc/<pid>/ns/net` of a pod sandbox, or a pinned bind mount.
    Join(PathBuf),
}

/// The namespaces a container gets; mount is always its own, user never used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    pub network: NamespaceMode,
    pub ipc: NamespaceMode,
    pub uts: NamespaceMode,
    pub pid: NamespaceMode,
    /// Host by default, as containerd (a cgroup namespace changes what /proc/self/cgroup
    /// shows; pods join none).
    pub cgroup: NamespaceMode,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            network: NamespaceMode::New,
            ipc: NamespaceMode::New,
            uts: NamespaceMode::New,
            pid: NamespaceMode::New,
            cgroup: NamespaceMode::Host,
        }
    }
}

/// Which seccomp filter the container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// rcd's default profile ([`seccomp::default_profile`]); none when privileged.
    #[default]
    RuntimeDefault,
    /// No filter.
    Unconfined,
    /// A profile file in Docker's JSON format (the CRI's `Localhost` profiles).
    Localhost(PathBuf),
}

/// One resource limit, as `--ulimit nofile=1024:2048`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    pub typ: PosixRlimitType,
    pub soft: u64,
    pub hard: u64,
}

impl Rlimit {
    /// Parses `name=soft[:hard]` (`nofile=1024:2048`, `RLIMIT_NPROC=100`); -1 is unlimited.
    pub fn parse(s: &str) -> Result<Rlimit, SpecError> {
        let bad = |reason: String| SpecError::InvalidRlimit {
            value: s.to_owned(),
            reason,
        };
        let (name, values) = s
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=SOFT[:HARD]".into()))?;
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("RLIMIT_") {
            upper
        } else {
            format!("RLIMIT_{upper}")
        };
        let typ: PosixRlimitType = full
            .parse()
            .map_err(|_| bad(format!("unknown resource {name:?}")))?;
        let num = |v: &str| -> Result<u64, SpecError> {
            if v == "-1" || v == "unlimited" {
                return Ok(u64::MAX);
            }
            v.parse().map_err(|_| bad(format!("{v:?} is not a number")))
        };
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (num(s)?, num(h)?),
            None => {
                let v = num(values)?;
                (v, v)
            }
        };
        if soft > hard {
            return Err(bad(format!(
                "soft limit {soft} is above the hard limit {hard}"
            )));
        }
        Ok(Rlimit { typ, soft, hard })
    }
}

/// Everything a caller can ask of a container beyond its image. `Default` is a plain
/// container running the image's command with the safe defaults.
#[derive(Debug, Clone, Default)]
pub struct ContainerRequest {
    /// The container ID: the default hostname (its first 12 characters).
    pub id: String,
    /// Replaces the image's Cmd.
    pub args: Option<Vec<String>>,
    /// Replaces the image's Entrypoint (an empty vector clears it; the Cmd of the image is
    /// then dropped too, as Docker does when `--entrypoint` is given).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE`, on top of the image's (same key: the request wins).
    pub env: Vec<String>,
    /// Working directory (absolute); default the image's, else `/`.
    pub cwd: Option<String>,
    /// `name|uid[:group|gid]`; default the image's User, else root.
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub hostname: Option<String>,
    pub mounts: Vec<MountRequest>,
    pub resources: Resources,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// Every capability rcd holds, every host device, no seccomp (unless a Localhost profile
    /// is asked for), no masked paths, read-write /sys.
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub no_new_privileges: bool,
    pub sysctls: BTreeMap<String, String>,
    pub devices: Vec<DeviceRequest>,
    /// Become annotations of the spec.
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub namespaces: Namespaces,
    /// rcd namespace of the container (default `default`): part of the default cgroup path.
    pub namespace: Option<String>,
    /// `linux.cgroupsPath`: an absolute cgroupfs path (a pod's parent plus the ID, see
    /// [`cgroups_path_under`]); default [`default_cgroups_path`].
    pub cgroups_path: Option<String>,
    /// `None`: RLIMIT_NOFILE 1024:1024 (containerd's default spec). `Some(vec![])`: none,
    /// the container inherits the runtime's (what the CRI wants).
    pub rlimits: Option<Vec<Rlimit>>,
    pub seccomp: SeccompMode,
    /// Only `None` or `unconfined`: rcd has no AppArmor support.
    pub apparmor_profile: Option<String>,
    /// Must be `None`: rcd has no SELinux support.
    pub selinux_label: Option<String>,
    /// Clamped to rcd's own unless it holds CAP_SYS_RESOURCE.
    pub oom_score_adj: Option<i32>,
    /// `/dev/shm` size in bytes (default 64 MiB).
    pub shm_size: Option<u64>,
    /// Replace the default masked / read-only paths (the CRI sends its own).
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
}

/// A generated spec and what the image asked for that an OCI spec cannot hold.
#[derive(Debug, Clone)]
pub struct GeneratedSpec {
    pub spec: Spec,
    /// The user the process runs as.
    pub user: ResolvedUser,
    /// The image's StopSignal (e.g. `SIGQUIT`), for whoever stops the container.
    pub stop_signal: Option<String>,
    /// The image's ExposedPorts (`80/tcp`), sorted.
    pub exposed_ports: Vec<String>,
    /// The image's Volumes that no request mount covers: the caller gives each an
    /// anonymous volume (rnerd) or leaves them in the rootfs (ctr does).
    pub image_volumes: Vec<String>,
}

/// Docker's masked paths: reading them shows nothing of the host.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Read-only inside the container.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// containerd-style cgroup path of a container: `/rcd/<namespace>/<id>`.
pub fn default_cgroups_path(namespace: &str, id: &str) -> String {
    format!("/rcd/{namespace}/{id}")
}

/// The cgroup path of container `id` under a pod's (or any) parent cgroup.
pub fn cgroups_path_under(parent: &str, id: &str) -> String {
    format!("{}/{id}", parent.trim_end_matches('/'))
}

fn check_cgroups_path(p: &str) -> Result<(), SpecError> {
    let bad = |reason: &str| SpecError::InvalidRequest {
        field: format!("cgroups path {p:?}"),
        reason: reason.to_owned(),
    };
    if !p.starts_with('/') {
        return Err(bad("it must be an absolute cgroupfs path"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(bad("it contains \"..\""));
    }
    if p.trim_end_matches('/').is_empty() {
        return Err(bad("a container cannot use the root cgroup"));
    }
    Ok(())
}

/// Merges environments: `base` then `over`, a key set twice keeps its first position and
/// takes the later value. Entries of `over` must be `KEY=VALUE` with a non-empty key.
pub fn merge_env(base: &[String], over: &[String]) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut put = |entry: &str, out: &mut Vec<String>| {
        let key = entry.split_once('=').map_or(entry, |(k, _)| k).to_owned();
        match index.get(&key) {
            Some(&i) => out[i] = entry.to_owned(),
            None => {
                index.insert(key, out.len());
                out.push(entry.to_owned());
            }
        }
    };
    for e in base {
        put(e, &mut out);
    }
    for e in over {
        let bad = |reason: &str| SpecError::InvalidEnv {
            entry: e.clone(),
            reason: reason.to_owned(),
        };
        match e.split_once('=') {
            None => return Err(bad("expected KEY=VALUE")),
            Some(("", _)) => return Err(bad("the key is empty")),
            Some(_) if e.contains('\0') => return Err(bad("it contains a NUL byte")),
            Some(_) => put(e, &mut out),
        }
    }
    Ok(out)
}

fn env_has(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
}

/// Which namespace a sysctl lives in; `None`: not namespaced (it would change the host).
fn sysctl_namespace(name: &str) -> Option<LinuxNamespaceType> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&name) || name.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if name.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if name == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// Checks the sysctls against the container's namespaces; names may use `/` (Kubernetes'
/// form) and come back with dots.
pub fn check_sysctls(
    sysctls: &BTreeMap<String, String>,
    ns: &Namespaces,
) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::new();
    for (raw, value) in sysctls {
        let name = raw.replace('/', ".");
        let bad = |reason: String| SpecError::InvalidSysctl {
            name: raw.clone(),
            reason,
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            || name.starts_with('.')
            || name.contains("..")
        {
            return Err(bad("not a sysctl name".into()));
        }
        if value.contains('\n') || value.contains('\0') {
            return Err(bad("the value contains a newline or NUL".into()));
        }
        let (mode, what) = match sysctl_namespace(&name) {
            None => {
                return Err(bad(
                    "not a namespaced sysctl: setting it would change the host".into(),
                ))
            }
            Some(LinuxNamespaceType::Ipc) => (&ns.ipc, "ipc"),
            Some(LinuxNamespaceType::Network) => (&ns.network, "network"),
            Some(_) => (&ns.uts, "uts"),
        };
        if *mode == NamespaceMode::Host {
            return Err(bad(format!(
                "the container shares the host's {what} namespace, so this would change the host"
            )));
        }
        out.insert(name, value.clone());
    }
    Ok(out)
}

fn check_hostname(h: &str) -> Result<(), SpecError> {
    let bad = |reason: &str| SpecError::InvalidRequest {
        field: format!("hostname {h:?}"),
        reason: reason.to_owned(),
    };
    if h.is_empty() || h.len() > 64 {
        return Err(bad("it must be 1 to 64 characters"));
    }
    if !h
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

fn namespaces(ns: &Namespaces) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut out = Vec::new();
    let mut push = |typ: LinuxNamespaceType, name: &str, mode: &NamespaceMode| {
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        match mode {
            NamespaceMode::Host => return Ok(()),
            NamespaceMode::New => {}
            NamespaceMode::Join(p) => {
                if !p.is_absolute() {
                    return Err(SpecError::InvalidNamespace {
                        namespace: name.to_owned(),
                        reason: format!("{} is not an absolute path", p.display()),
                    });
                }
                // the runtime opens it only after forking; a missing one is easier to
                // explain here
                if let Err(e) = std::fs::symlink_metadata(p) {
                    return Err(SpecError::InvalidNamespace {
                        namespace: name.to_owned(),
                        reason: format!("cannot join {}: {e}", p.display()),
                    });
                }
                n.set_path(Some(p.clone()));
            }
        }
        out.push(n);
        Ok(())
    };
    push(LinuxNamespaceType::Pid, "pid", &ns.pid)?;
    push(LinuxNamespaceType::Network, "network", &ns.network)?;
    push(LinuxNamespaceType::Ipc, "ipc", &ns.ipc)?;
    push(LinuxNamespaceType::Uts, "uts", &ns.uts)?;
    push(LinuxNamespaceType::Mount, "mount", &NamespaceMode::New)?;
    push(LinuxNamespaceType::Cgroup, "cgroup", &ns.cgroup)?;
    Ok(out)
}

fn rlimit(r: &Rlimit) -> PosixRlimit {
    PosixRlimitBuilder::default()
        .typ(r.typ)
        .soft(r.soft)
        .hard(r.hard)
        .build()
        .expect("every field of an rlimit is set")
}

/// Builds the spec of a container of `image` (its config: Entrypoint, Cmd, Env, WorkingDir,
/// User, Volumes, ExposedPorts, StopSignal) as `req` asks, with the root filesystem at
/// `rootfs` (a host path; it becomes `root.path`, and its /etc/passwd and /etc/group are
/// read, confined to it).
pub fn generate(
    image: Option<&ImageConfiguration>,
    req: &ContainerRequest,
    rootfs: &Path,
) -> Result<GeneratedSpec, SpecError> {
    let cfg = image.and_then(|i| i.config().clone()).unwrap_or_default();

    if let Some(p) = req.apparmor_profile.as_deref() {
        if p != "unconfined" {
            return Err(SpecError::Unsupported {
                what: format!("apparmor profile {p:?}"),
                feature: "AppArmor",
            });
        }
    }
    if let Some(l) = &req.selinux_label {
        return Err(SpecError::Unsupported {
            what: format!("selinux label {l:?}"),
            feature: "SELinux",
        });
    }

    // the command: Docker's rules for --entrypoint and CMD
    let entrypoint = match &req.entrypoint {
        Some(e) => e.clone(),
        None => cfg.entrypoint().clone().unwrap_or_default(),
    };
    let cmd = match (&req.args, &req.entrypoint) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => cfg.cmd().clone().unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::InvalidRequest {
            field: "command".into(),
            reason: "no command: the image has no Entrypoint or Cmd and the request gives none"
                .into(),
        });
    }

    let cwd = req
        .cwd
        .clone()
        .or_else(|| cfg.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::InvalidRequest {
            field: format!("working directory {cwd:?}"),
            reason: "it must be an absolute path".into(),
        });
    }

    // user
    let user_spec = req.user.clone().or_else(|| cfg.user().clone());
    let user = user::resolve(rootfs, user_spec.as_deref(), &req.additional_gids)?;

    // hostname and namespaces
    let uts_own = req.namespaces.uts != NamespaceMode::Host;
    let hostname = match &req.hostname {
        Some(h) => {
            if !uts_own {
                return Err(SpecError::InvalidRequest {
                    field: format!("hostname {h:?}"),
                    reason: "the container shares the host's uts namespace".into(),
                });
            }
            check_hostname(h)?;
            Some(h.clone())
        }
        None if req.namespaces.uts == NamespaceMode::New && !req.id.is_empty() => {
            let h: String = req.id.chars().take(12).collect();
            check_hostname(&h).ok().map(|_| h)
        }
        None => None,
    };

    // environment
    let image_env = cfg.env().clone().unwrap_or_default();
    let mut env = merge_env(&image_env, &req.env)?;
    if !env_has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(h) = &hostname {
        if !env_has(&env, "HOSTNAME") {
            env.push(format!("HOSTNAME={h}"));
        }
    }
    if req.tty && !env_has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    if !env_has(&env, "HOME") {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }

    // capabilities
    let available = caps::own_bounding_set();
    let caps = if req.privileged {
        available.clone()
    } else {
        caps::apply(
            caps::default_capabilities(),
            &req.cap_add,
            &req.cap_drop,
            &available,
        )?
    };
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps.clone()));
    // no inheritable and ambient caps: a non-root user keeps none across exec (as Docker
    // since CVE-2022-24769)
    lc.set_inheritable(None);
    lc.set_ambient(None);

    let rlimits = match &req.rlimits {
        None => vec![rlimit(&Rlimit {
            typ: PosixRlimitType::RlimitNofile,
            soft: 1024,
            hard: 1024,
        })],
        Some(v) => {
            let mut seen = Vec::new();
            for r in v {
                if seen.contains(&r.typ) {
                    return Err(SpecError::InvalidRlimit {
                        value: r.typ.to_string(),
                        reason: "given twice".into(),
                    });
                }
                seen.push(r.typ);
            }
            v.iter().map(rlimit).collect()
        }
    };

    let mut u = User::default();
    u.set_uid(user.uid);
    u.set_gid(user.gid);
    if !user.additional_gids.is_empty() {
        u.set_additional_gids(Some(user.additional_gids.clone()));
    }
    let mut process = Process::default();
    process.set_terminal(Some(req.tty));
    process.set_user(u);
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_capabilities(Some(lc));
    process.set_rlimits(if rlimits.is_empty() {
        None
    } else {
        Some(rlimits)
    });
    // false is written as absent (the same in the OCI spec): youki's libcontainer 0.7 tests
    // the field for presence, and with `false` present loads seccomp after dropping
    // CAP_SYS_ADMIN, which fails
    process.set_no_new_privileges(req.no_new_privileges.then_some(true));
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    if let Some(adj) = req.oom_score_adj {
        process.set_oom_score_adj(Some(resources::clamp_oom_score_adj(
            adj,
            resources::own_oom_score_adj(),
            available.contains(&Capability::SysResource),
        )));
    }

    // mounts: defaults, then the request's (a request mount replaces a default one at the
    // same destination, e.g. a bigger /dev/shm)
    let mut mounts =
        mounts::default_mounts(req.shm_size.unwrap_or(DEFAULT_SHM_SIZE), req.privileged);
    let mut seen_dst = HashSet::new();
    for m in &req.mounts {
        let oci = mounts::to_oci(m)?;
        let dst = clean_dst(&m.destination);
        if !seen_dst.insert(dst.clone()) {
            return Err(SpecError::InvalidMount {
                destination: m.destination.clone(),
                reason: "two mounts have this destination".into(),
            });
        }
        mounts.retain(|d| clean_dst(&d.destination().to_string_lossy()) != dst);
        mounts.push(oci);
    }
    let mut image_volumes: Vec<String> = cfg
        .volumes()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !seen_dst.contains(&clean_dst(v)))
        .collect();
    image_volumes.sort();

    // linux
    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_namespaces(Some(namespaces(&req.namespaces)?));
    let sysctls = check_sysctls(&req.sysctls, &req.namespaces)?;
    linux.set_sysctl(if sysctls.is_empty() {
        None
    } else {
        Some(sysctls)
    });
    let mut res = resources::to_oci(&req.resources)?;
    let mut rules = devices::default_cgroup_rules();
    let mut devs = Vec::new();
    if req.privileged {
        rules = vec![devices::cgroup_rule(true, None, None, None, "rwm")];
        devs = devices::all_host_devices();
    }
    for d in &req.devices {
        let (dev, rule) = devices::host_device(d)?;
        devs.retain(|x| x.path() != dev.path());
        devs.push(dev);
        if !req.privileged {
            rules.push(rule);
        }
    }
    res.set_devices(Some(rules));
    linux.set_resources(Some(res));
    linux.set_devices(if devs.is_empty() { None } else { Some(devs) });
    let cgroups_path = match &req.cgroups_path {
        Some(p) => p.clone(),
        None => {
            if req.id.is_empty() || req.id.contains('/') || req.id == ".." {
                return Err(SpecError::InvalidRequest {
                    field: format!("container id {:?}", req.id),
                    reason: "it cannot name a cgroup (empty, or with '/')".into(),
                });
            }
            default_cgroups_path(req.namespace.as_deref().unwrap_or("default"), &req.id)
        }
    };
    check_cgroups_path(&cgroups_path)?;
    linux.set_cgroups_path(Some(cgroups_path.into()));
    if req.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        let own = |v: &Option<Vec<String>>, d: &[&str]| {
            v.clone()
                .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
        };
        linux.set_masked_paths(Some(own(&req.masked_paths, DEFAULT_MASKED_PATHS)));
        linux.set_readonly_paths(Some(own(&req.readonly_paths, DEFAULT_READONLY_PATHS)));
    }
    let seccomp = match (&req.seccomp, req.privileged) {
        (SeccompMode::Localhost(p), _) => Some(seccomp::load_profile(p, &caps)?),
        (SeccompMode::Unconfined, _) | (SeccompMode::RuntimeDefault, true) => None,
        (SeccompMode::RuntimeDefault, false) => Some(seccomp::default_profile(&caps)),
    };
    linux.set_seccomp(seccomp);

    let mut root = Root::default();
    root.set_path(rootfs.to_owned());
    root.set_readonly(Some(req.readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version("1.0.2-dev".into());
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(hostname);
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    spec.set_hooks(None);
    let annotations: HashMap<String, String> = req.labels.clone().into_iter().collect();
    spec.set_annotations(if annotations.is_empty() {
        None
    } else {
        Some(annotations)
    });

    let mut exposed_ports = cfg.exposed_ports().clone().unwrap_or_default();
    exposed_ports.sort();
    Ok(GeneratedSpec {
        spec,
        user,
        stop_signal: cfg.stop_signal().clone(),
        exposed_ports,
        image_volumes,
    })
}

/// An extra process in a running container (`exec`): what changes from the container's own.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// `KEY=VALUE` on top of the container's environment.
    pub env: Vec<String>,
    /// Default the container's working directory.
    pub cwd: Option<String>,
    /// `name|uid[:group|gid]`, resolved in the container's rootfs; default the container's.
    pub user: Option<String>,
    pub tty: bool,
}

/// The `process` of an exec in a container made from `container` (its spec): its
/// capabilities, rlimits, no_new_privileges and environment, with `req` on top. Runtimes
/// take it as `exec --process FILE`.
pub fn exec_process(
    container: &Spec,
    req: &ExecRequest,
    rootfs: &Path,
) -> Result<Process, SpecError> {
    let mut p = container.process().clone().unwrap_or_default();
    if req.args.is_empty() {
        return Err(SpecError::InvalidRequest {
            field: "exec command".into(),
            reason: "it is empty".into(),
        });
    }
    p.set_args(Some(req.args.clone()));
    let mut env = merge_env(&p.env().clone().unwrap_or_default(), &req.env)?;
    if let Some(u) = &req.user {
        let user = user::resolve(rootfs, Some(u), &[])?;
        let mut spec_user = User::default();
        spec_user.set_uid(user.uid);
        spec_user.set_gid(user.gid);
        if !user.additional_gids.is_empty() {
            spec_user.set_additional_gids(Some(user.additional_gids.clone()));
        }
        p.set_user(spec_user);
        // HOME follows the user unless the exec sets it
        if !req.env.iter().any(|e| e.starts_with("HOME=")) {
            env.retain(|e| !e.starts_with("HOME="));
            env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
        }
    }
    if req.tty && !env_has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    p.set_env(Some(env));
    if let Some(c) = &req.cwd {
        if !c.starts_with('/') {
            return Err(SpecError::InvalidRequest {
                field: format!("working directory {c:?}"),
                reason: "it must be an absolute path".into(),
            });
        }
        p.set_cwd(c.into());
    }
    p.set_terminal(Some(req.tty));
    // an exec never changes the container's oom_score_adj
    p.set_oom_score_adj(None);
    Ok(p)
}

fn clean_dst(d: &str) -> String {
    let t = d.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_owned()
    }
}

#[cfg(test)]
mod tests;
