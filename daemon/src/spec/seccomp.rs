//! Seccomp: rcd's default profile (the confinement Docker and containerd apply by default:
//! deny with EPERM, allow what ordinary programs use, unlock more per capability) and
//! Localhost profiles in Docker's JSON format, both resolved into an OCI `LinuxSeccomp` for
//! one container's capabilities and the host's architecture.
//!
//! The allow-list is written here by area; what it contains follows Docker's published
//! default, checked against it by hand.

use super::SpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;

/// EPERM: what a denied syscall returns.
const EPERM: u32 = 1;
/// ENOSYS: what `clone3` returns without CAP_SYS_ADMIN, so libc falls back to `clone`, whose
/// flags the filter can see (clone3 passes them in memory).
const ENOSYS: u32 = 38;

const FILES: &[&str] = &[
    "access",
    "faccessat",
    "faccessat2",
    "chdir",
    "fchdir",
    "getcwd",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "chown32",
    "fchown",
    "fchown32",
    "fchownat",
    "lchown",
    "lchown32",
    "umask",
    "open",
    "openat",
    "openat2",
    "creat",
    "close",
    "close_range",
    "read",
    "readv",
    "pread64",
    "preadv",
    "preadv2",
    "write",
    "writev",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "lseek",
    "_llseek",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "fcntl64",
    "flock",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "fallocate",
    "fadvise64",
    "fadvise64_64",
    "readahead",
    "truncate",
    "truncate64",
    "ftruncate",
    "ftruncate64",
    "getdents",
    "getdents64",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "rmdir",
    "readlink",
    "readlinkat",
    "stat",
    "stat64",
    "lstat",
    "lstat64",
    "fstat",
    "fstat64",
    "fstatat64",
    "newfstatat",
    "statx",
    "statfs",
    "statfs64",
    "fstatfs",
    "fstatfs64",
    "utime",
    "utimes",
    "utimensat",
    "utimensat_time64",
    "futimesat",
    "copy_file_range",
    "sendfile",
    "sendfile64",
    "splice",
    "tee",
    "vmsplice",
    "name_to_handle_at",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "ioctl",
];

const EVENTS: &[&str] = &[
    "select",
    "_newselect",
    "pselect6",
    "pselect6_time64",
    "poll",
    "ppoll",
    "ppoll_time64",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_wait",
    "epoll_wait_old",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "fanotify_mark",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_settime64",
    "timerfd_gettime",
    "timerfd_gettime64",
    "pipe",
    "pipe2",
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_cancel",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

const MEMORY: &[&str] = &[
    "brk",
    "mmap",
    "mmap2",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mincore",
    "msync",
    "mlock",
    "mlock2",
    "mlockall",
    "munlock",
    "munlockall",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "remap_file_pages",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "process_mrelease",
];

const PROCESSES: &[&str] = &[
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    "kill",
    "tkill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getpgrp",
    "getsid",
    "setsid",
    "getpriority",
    "setpriority",
    "prctl",
    "capget",
    "capset",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "restart_syscall",
    "futex",
    "futex_time64",
    "futex_waitv",
    "getrlimit",
    "setrlimit",
    "ugetrlimit",
    "prlimit64",
    "getrusage",
    "times",
    "sysinfo",
    "uname",
    "getcpu",
    "get_thread_area",
    "set_thread_area",
    "seccomp",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "ioprio_get",
    "ioprio_set",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getattr",
    "sched_setattr",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "getrandom",
    // credentials: changing them is still bounded by CAP_SETUID/CAP_SETGID
    "getuid",
    "getuid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getegid",
    "getegid32",
    "getresuid",
    "getresuid32",
    "getresgid",
    "getresgid32",
    "getgroups",
    "getgroups32",
    "setuid",
    "setuid32",
    "setgid",
    "setgid32",
    "setreuid",
    "setreuid32",
    "setregid",
    "setregid32",
    "setresuid",
    "setresuid32",
    "setresgid",
    "setresgid32",
    "setfsuid",
    "setfsuid32",
    "setfsgid",
    "setfsgid32",
    "setgroups",
    "setgroups32",
];

const SIGNALS_AND_TIME: &[&str] = &[
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigsuspend",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "sigaltstack",
    "sigprocmask",
    "sigreturn",
    "pause",
    "alarm",
    "time",
    "gettimeofday",
    "clock_gettime",
    "clock_gettime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "nanosleep",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_delete",
    "timer_settime",
    "timer_settime64",
    "timer_gettime",
    "timer_gettime64",
    "timer_getoverrun",
    // read-only unless CAP_SYS_TIME: the kernel checks modes that would set the clock
    "adjtimex",
    "clock_adjtime",
    "clock_adjtime64",
];

const NETWORK_AND_IPC: &[&str] = &[
    "socketpair",
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "send",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recv",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "recvmmsg_time64",
    "shutdown",
    "socketcall",
    "ipc",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "semctl",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_notify",
    "mq_getsetattr",
    // cross-process inspection: also gated by ptrace access checks (kernel 4.8+)
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
];

/// Syscalls a capability unlocks (they do nothing useful without it anyway, and have a long
/// record of kernel bugs reachable from inside a container).
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["init_module", "finit_module", "delete_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// `personality(2)` values a container may set: Linux, 32-bit Linux, UNAME26 (both), and
/// the query value 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The namespace flags of `clone(2)`: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET. Without CAP_SYS_ADMIN a clone with any of them set is denied.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// AF_VSOCK: the host's hypervisor sockets stay out of reach.
const AF_VSOCK: u64 = 40;

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s
}

fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    arg2(index, value, None, op)
}

fn arg2(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    b.build().expect("every field of a seccomp arg is set")
}

/// The seccomp architectures of the host: the native one and the 32-bit ones its kernel
/// also runs, so a 32-bit binary cannot sidestep the filter.
pub fn host_architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "x86" => vec![Arch::ScmpArchX86],
        "arm" => vec![Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// rcd's default profile for a container holding `caps` (its bounding set).
pub fn default_profile(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut base: Vec<&str> = [
        FILES,
        EVENTS,
        MEMORY,
        PROCESSES,
        SIGNALS_AND_TIME,
        NETWORK_AND_IPC,
    ]
    .concat();
    match std::env::consts::ARCH {
        "x86_64" => base.extend(["arch_prctl", "modify_ldt"]),
        "x86" => base.push("modify_ldt"),
        "aarch64" | "arm" => base.extend([
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]),
        _ => {}
    }
    let mut syscalls = vec![rule(&base, allow)];

    let mut socket = rule(&["socket"], allow);
    socket.set_args(Some(vec![arg(
        0,
        AF_VSOCK,
        LinuxSeccompOperator::ScmpCmpNe,
    )]));
    syscalls.push(socket);
    for &p in PERSONALITIES {
        let mut r = rule(&["personality"], allow);
        r.set_args(Some(vec![arg(0, p, LinuxSeccompOperator::ScmpCmpEq)]));
        syscalls.push(r);
    }

    let mut unlocked: Vec<&str> = Vec::new();
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            for n in *names {
                if !unlocked.contains(n) {
                    unlocked.push(n);
                }
            }
        }
    }
    if !unlocked.is_empty() {
        syscalls.push(rule(&unlocked, allow));
    }
    if !caps.contains(&Capability::SysAdmin) {
        // s390 passes the flags as the second argument; every other arch as the first.
        // SCMP_CMP_MASKED_EQ is `(arg & value) == valueTwo` (OCI, runc). youki's
        // libcontainer 0.7 swaps the two, which makes the mask 0 and the rule an
        // unconditional allow: runr must swap them back before handing the spec over.
        let index = if std::env::consts::ARCH == "s390x" {
            1
        } else {
            0
        };
        let mut clone = rule(&["clone"], allow);
        clone.set_args(Some(vec![arg2(
            index,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )]));
        syscalls.push(clone);
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }

    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActErrno);
    s.set_default_errno_ret(Some(EPERM));
    s.set_architectures(Some(host_architectures()));
    s.set_syscalls(Some(syscalls));
    s
}

// ---- Localhost profiles: Docker's JSON format ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<Arch>>,
    #[serde(default)]
    arch_map: Option<Vec<DockerArchMap>>,
    #[serde(default)]
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<DockerSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<DockerArg>>,
    #[serde(default)]
    includes: Option<DockerFilter>,
    #[serde(default)]
    excludes: Option<DockerFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArg {
    index: usize,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: LinuxSeccompOperator,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerFilter {
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// The host architecture as Docker's profiles name it (Go's GOARCH).
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn kernel_version() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| parse_kernel_version(r.trim()))
        .unwrap_or((0, 0))
}

fn parse_kernel_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Loads a Localhost profile (Docker's JSON: `defaultAction`, `architectures` or `archMap`,
/// `syscalls` with `name`/`names`, `args`, `includes`/`excludes` by `caps`, `arches` and
/// `minKernel`) and resolves it for a container holding `caps` on this host.
pub fn load_profile(path: &Path, caps: &HashSet<Capability>) -> Result<LinuxSeccomp, SpecError> {
    let bad = |reason: String| SpecError::SeccompProfile {
        path: path.to_owned(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    convert_profile(&data, caps, kernel_version()).map_err(bad)
}

fn convert_profile(
    data: &[u8],
    caps: &HashSet<Capability>,
    kernel: (u32, u32),
) -> Result<LinuxSeccomp, String> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let p: DockerProfile = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| format!("invalid profile at {}: {}", e.path(), e.inner()))?;
    let mut out = LinuxSeccomp::default();
    out.set_default_action(p.default_action);
    out.set_default_errno_ret(p.default_errno_ret);
    out.set_flags(p.flags);
    out.set_listener_path(p.listener_path.map(Into::into));
    out.set_listener_metadata(p.listener_metadata);
    if p.architectures.is_some() && p.arch_map.is_some() {
        return Err("it sets both architectures and archMap".into());
    }
    let arches = if let Some(map) = p.arch_map {
        // archMap lists every arch Docker supports: keep the entry for this host
        let native = host_architectures()[0];
        map.into_iter().find(|m| m.architecture == native).map(|m| {
            let mut v = vec![m.architecture];
            v.extend(m.sub_architectures.unwrap_or_default());
            v
        })
    } else {
        p.architectures
    };
    out.set_architectures(arches);

    let cap_names: HashSet<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
    let mut syscalls = Vec::new();
    for (i, s) in p.syscalls.unwrap_or_default().into_iter().enumerate() {
        let names = match (s.name, s.names) {
            (Some(_), Some(_)) => {
                return Err(format!("syscalls[{i}] sets both name and names"));
            }
            (Some(n), None) => vec![n],
            (None, Some(ns)) if !ns.is_empty() => ns,
            _ => return Err(format!("syscalls[{i}] names no syscall")),
        };
        let matches = |f: &DockerFilter| -> Result<(bool, bool, bool), String> {
            let arch = f
                .arches
                .as_ref()
                .map(|a| a.iter().any(|a| a == docker_arch()));
            let cap = f
                .caps
                .as_ref()
                .map(|c| c.iter().any(|c| cap_names.contains(&c.to_uppercase())));
            let kern = match &f.min_kernel {
                None => None,
                Some(v) => {
                    let min = parse_kernel_version(v).ok_or_else(|| {
                        format!("syscalls[{i}]: minKernel {v:?} is not a kernel version")
                    })?;
                    Some(kernel >= min)
                }
            };
            Ok((
                arch.unwrap_or(true),
                cap.unwrap_or(true),
                kern.unwrap_or(true),
            ))
        };
        if let Some(inc) = &s.includes {
            // includes: every listed condition must hold (any arch of the list, all caps)
            let (a, _, k) = matches(inc)?;
            let all_caps = inc
                .caps
                .as_ref()
                .is_none_or(|c| c.iter().all(|c| cap_names.contains(&c.to_uppercase())));
            if !(a && all_caps && k) {
                continue;
            }
        }
        if let Some(exc) = &s.excludes {
            let arch_hit = exc
                .arches
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| a == docker_arch()));
            let cap_hit = exc
                .caps
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| cap_names.contains(&c.to_uppercase())));
            let (_, _, k) = matches(exc)?;
            let kern_hit = exc.min_kernel.is_some() && k;
            if arch_hit || cap_hit || kern_hit {
                continue;
            }
        }
        let mut r = LinuxSyscall::default();
        r.set_names(names);
        r.set_action(s.action);
        r.set_errno_ret(s.errno_ret);
        if let Some(args) = s.args {
            r.set_args(Some(
                args.into_iter()
                    .map(|a| {
                        let two = (a.value_two != 0
                            || a.op == LinuxSeccompOperator::ScmpCmpMaskedEq)
                            .then_some(a.value_two);
                        arg2(a.index, a.value, two, a.op)
                    })
                    .collect(),
            ));
        }
        syscalls.push(r);
    }
    out.set_syscalls(Some(syscalls));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &LinuxSeccomp) -> HashSet<String> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    fn default_caps() -> HashSet<Capability> {
        super::super::caps::default_capabilities()
    }

    #[test]
    fn default_profile_denies_with_eperm_and_allows_the_common_set() {
        let p = default_profile(&default_caps());
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let a = allowed(&p);
        assert!(a.len() > 300, "only {} syscalls allowed", a.len());
        for s in [
            "read",
            "openat",
            "execve",
            "clock_gettime",
            "socketpair",
            "futex",
            "wait4",
        ] {
            assert!(a.contains(s), "{s} should be allowed");
        }
        for s in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "reboot",
            "init_module",
            "kexec_load",
            "bpf",
            "ptrace_nonexistent",
            "open_by_handle_at",
            "clone",
            "clone3",
            "chroot",
        ] {
            if s == "chroot" {
                // CAP_SYS_CHROOT is one of the default capabilities
                assert!(a.contains(s));
                continue;
            }
            assert!(!a.contains(s), "{s} should not be allowed unconditionally");
        }
    }

    #[test]
    fn default_profile_names_are_unique_in_the_base_rule() {
        let p = default_profile(&default_caps());
        let base = &p.syscalls().as_ref().unwrap()[0];
        let mut seen = HashSet::new();
        for n in base.names() {
            assert!(seen.insert(n.clone()), "{n} listed twice");
        }
    }

    #[test]
    fn clone_is_restricted_without_sys_admin_and_free_with_it() {
        let p = default_profile(&default_caps());
        let clones: Vec<(u64, Option<u64>)> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names() == &["clone".to_string()])
            .map(|s| {
                let a = s.args().as_ref().unwrap()[0];
                assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
                (a.value(), a.value_two())
            })
            .collect();
        assert_eq!(clones, vec![(0x7E02_0000, Some(0))]);
        let clone3 = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &["clone3".to_string()])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(38));

        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        let p = default_profile(&caps);
        let a = allowed(&p);
        for s in [
            "clone",
            "clone3",
            "mount",
            "unshare",
            "setns",
            "sethostname",
        ] {
            assert!(a.contains(s), "{s} should be allowed with CAP_SYS_ADMIN");
        }
        assert!(!p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .any(|s| s.errno_ret() == Some(38)));
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let mut caps = default_caps();
        caps.insert(Capability::SysPtrace);
        caps.insert(Capability::SysModule);
        caps.insert(Capability::SysTime);
        let a = allowed(&default_profile(&caps));
        for s in [
            "kcmp",
            "pidfd_getfd",
            "init_module",
            "delete_module",
            "settimeofday",
        ] {
            assert!(a.contains(s), "{s}");
        }
        assert!(!a.contains("reboot"));
    }

    #[test]
    fn personality_and_socket_are_argument_filtered() {
        let p = default_profile(&default_caps());
        let sc = p.syscalls().as_ref().unwrap();
        let pers: Vec<u64> = sc
            .iter()
            .filter(|s| s.names() == &["personality".to_string()])
            .map(|s| s.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(pers, vec![0, 8, 0x20000, 0x20008, 0xffffffff]);
        let socket = sc
            .iter()
            .find(|s| s.names() == &["socket".to_string()])
            .unwrap();
        let a = socket.args().as_ref().unwrap()[0];
        assert_eq!((a.value(), a.op()), (40, LinuxSeccompOperator::ScmpCmpNe));
    }

    #[test]
    fn architectures_cover_the_32_bit_abis() {
        let p = default_profile(&default_caps());
        let arches = p.architectures().as_ref().unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                arches,
                &vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
            );
        }
        assert!(!arches.is_empty());
    }

    #[test]
    fn default_profile_serializes_as_oci_json() {
        let p = default_profile(&default_caps());
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
    }

    const DOCKER_STYLE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
        ],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"name": "getpid", "action": "SCMP_ACT_ALLOW", "comment": "old single-name form"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["future_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}}
        ]
    }"#;

    #[test]
    fn docker_profile_is_resolved_for_caps_arch_and_kernel() {
        let p = convert_profile(DOCKER_STYLE.as_bytes(), &default_caps(), (6, 1)).unwrap();
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().as_ref().unwrap()[0],
            host_architectures()[0]
        );
        let names: Vec<String> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.names().clone())
            .collect();
        assert!(names.contains(&"getpid".to_string()));
        assert!(!names.contains(&"mount".to_string()));
        assert!(names.contains(&"clone".to_string()));
        assert!(!names.contains(&"future_call".to_string()));
        assert!(names.contains(&"ptrace".to_string()));
        if cfg!(target_arch = "x86_64") {
            assert!(names.contains(&"arch_prctl".to_string()));
            assert!(!names.contains(&"set_tls".to_string()));
        }
        let clone = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names()[0] == "clone")
            .unwrap();
        assert_eq!(clone.args().as_ref().unwrap()[0].value_two(), Some(0));

        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        let p = convert_profile(DOCKER_STYLE.as_bytes(), &caps, (6, 1)).unwrap();
        let names: Vec<String> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.names().clone())
            .collect();
        assert!(names.contains(&"mount".to_string()));
        assert!(!names.contains(&"clone".to_string()));
    }

    #[test]
    fn bad_docker_profiles_are_refused_with_the_reason() {
        let caps = default_caps();
        let e = convert_profile(b"{", &caps, (6, 1)).unwrap_err();
        assert!(e.contains("invalid profile"), "{e}");
        let e =
            convert_profile(br#"{"defaultAction": "SCMP_ACT_NOPE"}"#, &caps, (6, 1)).unwrap_err();
        assert!(e.contains("defaultAction"), "{e}");
        let e = convert_profile(
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#,
            &caps,
            (6, 1),
        )
        .unwrap_err();
        assert!(e.contains("syscalls[0] names no syscall"), "{e}");
        let e = convert_profile(
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}"#,
            &caps,
            (6, 1),
        )
        .unwrap_err();
        assert!(e.contains("minKernel"), "{e}");
    }

    #[test]
    fn missing_profile_file_names_the_path() {
        let e = load_profile(Path::new("/nonexistent/profile.json"), &default_caps())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/profile.json"), "{e}");
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.1.0-13-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("x"), None);
    }
}
