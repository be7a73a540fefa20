//! Seccomp filters compiled once and kept: libseccomp takes ~5 ms per architecture to turn
//! Docker's default profile into BPF (15 ms of a 35 ms `create` with the usual three
//! architectures), and every container and every exec of a node uses the same few profiles.
//!
//! A profile is compiled with libseccomp into the exact program `seccomp_load` would install
//! (same calls, same order, `seccomp_export_bpf`), stored under `<root>/.seccomp/<sha256>` and
//! installed with the raw `seccomp(2)` call in the container's init just before it execs the
//! workload (see `executor.rs`). libcontainer's own loading path stays in use for what this does
//! not cover: notify actions (they need the listener hand-off) and filter flags other than
//! log/tsync/spec_allow.
//!
//! Written here rather than taken from libcontainer because libcontainer 0.7 only offers
//! "compile and load into the calling process", with no way to keep the result.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, Spec,
};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};

/// Bumped when the compilation below changes, so older cached programs are not reused.
const FORMAT: &str = "runr-seccomp-1";
/// The kernel's limit on a filter's length (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;
const INSN_SIZE: usize = 8;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile: {what}: {source}")]
    Compile {
        what: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp profile: errno {0} of a trace action does not fit in 16 bits")]
    TraceErrno(u32),
    #[error("seccomp profile compiled to {0} instructions; the kernel takes at most 4096")]
    TooLong(usize),
    #[error("writing the compiled seccomp filter to {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
}

/// A compiled filter: the program (`struct sock_filter[]`, 8 bytes each) and the
/// `seccomp(2)` flags it is installed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub program: Vec<u8>,
    pub flags: u32,
}

/// Whether runr compiles and installs `seccomp` itself (else libcontainer does).
pub fn handled(seccomp: &LinuxSeccomp) -> bool {
    let notify = seccomp.default_action() == LinuxSeccompAction::ScmpActNotify
        || seccomp
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
    let odd_flag = seccomp.flags().iter().flatten().any(|f| {
        !matches!(
            f,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog
                | LinuxSeccompFilterFlag::SeccompFilterFlagTsync
                | LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow
        )
    });
    !notify && !odd_flag
}

/// The profile of `spec` when runr handles it (see [`handled`]).
pub fn of_spec(spec: &Spec) -> Option<&LinuxSeccomp> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .filter(|s| handled(s))
}

/// The compiled `seccomp`, from the cache in `root` when it is there, else compiled and stored.
/// A cache that cannot be written only costs the next container the compilation again.
pub fn prepare(seccomp: &LinuxSeccomp, root: &Path) -> Result<Filter, SeccompError> {
    let flags = flags(seccomp);
    let dir = root.join(".seccomp");
    let path = dir.join(key(seccomp));
    if let Ok(program) = std::fs::read(&path) {
        if valid_program(&program) {
            return Ok(Filter { program, flags });
        }
        tracing::warn!(
            "discarding malformed cached seccomp filter {}",
            path.display()
        );
    }
    let filter = compile(seccomp)?;
    if let Err(e) = store(&dir, &path, &filter.program) {
        tracing::warn!("{e}");
    }
    Ok(filter)
}

fn valid_program(p: &[u8]) -> bool {
    !p.is_empty() && p.len() % INSN_SIZE == 0 && p.len() / INSN_SIZE <= MAX_INSNS
}

fn store(dir: &Path, path: &Path, program: &[u8]) -> Result<(), SeccompError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| SeccompError::Cache {
        path: path.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    // written aside and renamed, so a concurrent reader sees all of it or nothing
    let tmp = dir.join(format!(".tmp.{}", std::process::id()));
    std::fs::write(&tmp, program).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// The cache key: the profile, the libseccomp that compiles it and this compiler's format.
fn key(seccomp: &LinuxSeccomp) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT);
    if let Ok(v) = libseccomp::ScmpVersion::current() {
        h.update(format!("libseccomp {}.{}.{}", v.major, v.minor, v.micro));
    }
    h.update(serde_json::to_vec(seccomp).unwrap_or_default());
    hex::encode(h.finalize())
}

fn flags(seccomp: &LinuxSeccomp) -> u32 {
    seccomp
        .flags()
        .iter()
        .flatten()
        .map(|f| match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// The program libseccomp would load for `seccomp`, following the OCI rules as runc does:
/// rules whose action is the default are dropped, names the library does not know are
/// skipped, and a syscall that compares one argument twice gets one rule per comparison.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    use libseccomp::{ScmpArgCompare, ScmpFilterContext, ScmpSyscall};
    let fail = |what: String| move |source| SeccompError::Compile { what, source };
    let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
    let mut ctx =
        ScmpFilterContext::new(default).map_err(fail("creating the filter".to_owned()))?;
    // libseccomp must not set no_new_privs itself: the spec decides that
    ctx.set_ctl_nnp(false)
        .map_err(fail("clearing SCMP_FLTATR_CTL_NNP".to_owned()))?;
    for &a in seccomp.architectures().iter().flatten() {
        ctx.add_arch(arch(a))
            .map_err(fail(format!("adding architecture {a:?}")))?;
    }
    for rule in seccomp.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let cmps: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => libseccomp::ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpLt => libseccomp::ScmpCompareOp::Less,
                    LinuxSeccompOperator::ScmpCmpLe => libseccomp::ScmpCompareOp::LessOrEqual,
                    LinuxSeccompOperator::ScmpCmpEq => libseccomp::ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpGe => libseccomp::ScmpCompareOp::GreaterEqual,
                    LinuxSeccompOperator::ScmpCmpGt => libseccomp::ScmpCompareOp::Greater,
                    // OCI: `value` is the mask, `valueTwo` the datum
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        return ScmpArgCompare::new(
                            a.index() as u32,
                            libseccomp::ScmpCompareOp::MaskedEqual(a.value()),
                            a.value_two().unwrap_or(0),
                        )
                    }
                };
                ScmpArgCompare::new(a.index() as u32, op, a.value())
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        let repeated = rule
            .args()
            .iter()
            .flatten()
            .any(|a| !seen.insert(a.index()));
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                tracing::debug!("seccomp: syscall {name:?} is unknown to libseccomp, skipped");
                continue;
            };
            let what = || format!("adding the rule for {name}");
            if cmps.is_empty() {
                ctx.add_rule(act, sc).map_err(fail(what()))?;
            } else if repeated {
                for c in &cmps {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))
                        .map_err(fail(what()))?;
                }
            } else {
                ctx.add_rule_conditional(act, sc, &cmps)
                    .map_err(fail(what()))?;
            }
        }
    }
    let mut out = tempfile_mem().map_err(|e| SeccompError::Cache {
        path: PathBuf::from("memfd"),
        source: e,
    })?;
    ctx.export_bpf(&out)
        .map_err(fail("exporting the program".to_owned()))?;
    let program = {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        out.rewind()
            .and_then(|_| out.read_to_end(&mut v))
            .map_err(|e| SeccompError::Cache {
                path: PathBuf::from("memfd"),
                source: e,
            })?;
        v
    };
    if !valid_program(&program) {
        return Err(SeccompError::TooLong(program.len() / INSN_SIZE));
    }
    Ok(Filter {
        program,
        flags: flags(seccomp),
    })
}

fn tempfile_mem() -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a static name; the new descriptor is owned by the File
    let fd = unsafe { libc::memfd_create(c"runr-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<libseccomp::ScmpAction, SeccompError> {
    use libseccomp::ScmpAction as A;
    let e = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => A::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => A::KillProcess,
        LinuxSeccompAction::ScmpActTrap => A::Trap,
        LinuxSeccompAction::ScmpActErrno => A::Errno(e as i32),
        LinuxSeccompAction::ScmpActTrace => {
            A::Trace(u16::try_from(e).map_err(|_| SeccompError::TraceErrno(e))?)
        }
        LinuxSeccompAction::ScmpActAllow => A::Allow,
        LinuxSeccompAction::ScmpActLog => A::Log,
        LinuxSeccompAction::ScmpActNotify => A::Notify,
    })
}

fn arch(a: Arch) -> libseccomp::ScmpArch {
    use libseccomp::ScmpArch as S;
    match a {
        Arch::ScmpArchNative => S::Native,
        Arch::ScmpArchX86 => S::X86,
        Arch::ScmpArchX86_64 => S::X8664,
        Arch::ScmpArchX32 => S::X32,
        Arch::ScmpArchArm => S::Arm,
        Arch::ScmpArchAarch64 => S::Aarch64,
        Arch::ScmpArchMips => S::Mips,
        Arch::ScmpArchMips64 => S::Mips64,
        Arch::ScmpArchMips64n32 => S::Mips64N32,
        Arch::ScmpArchMipsel => S::Mipsel,
        Arch::ScmpArchMipsel64 => S::Mipsel64,
        Arch::ScmpArchMipsel64n32 => S::Mipsel64N32,
        Arch::ScmpArchPpc => S::Ppc,
        Arch::ScmpArchPpc64 => S::Ppc64,
        Arch::ScmpArchPpc64le => S::Ppc64Le,
        Arch::ScmpArchS390 => S::S390,
        Arch::ScmpArchS390x => S::S390X,
        Arch::ScmpArchRiscv64 => S::Riscv64,
        Arch::ScmpArchParisc => S::Parisc,
        Arch::ScmpArchParisc64 => S::Parisc64,
        Arch::ScmpArchLoongarch64 => S::Loongarch64,
        Arch::ScmpArchM68k => S::M68k,
        Arch::ScmpArchSh => S::Sh,
        Arch::ScmpArchSheb => S::Sheb,
    }
}

/// Installs `f` on the calling thread (and its siblings with tsync). The caller must have
/// CAP_SYS_ADMIN or no_new_privs, as for any filter.
pub fn install(f: &Filter) -> io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const u8,
    }
    let prog = SockFprog {
        len: (f.program.len() / INSN_SIZE) as libc::c_ushort,
        filter: f.program.as_ptr(),
    };
    // SAFETY: the program outlives the call and its length is in instructions, as the kernel
    // expects; the kernel copies it
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            f.flags as libc::c_ulong,
            &prog as *const SockFprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a process confined by `seccomp` may still call capset(2) with any arguments:
/// installing the filter before the last capability drop needs that. A rule with argument
/// conditions makes the answer depend on the arguments, so it counts as "no".
pub fn allows_capset(seccomp: &LinuxSeccomp) -> bool {
    let allow = |a| {
        matches!(
            a,
            LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
        )
    };
    let rules: Vec<_> = seccomp
        .syscalls()
        .iter()
        .flatten()
        .filter(|r| r.names().iter().any(|n| n == "capset"))
        .collect();
    if rules.is_empty() {
        return allow(seccomp.default_action());
    }
    rules
        .iter()
        .all(|r| allow(r.action()) && r.args().as_ref().is_none_or(|a| a.is_empty()))
}

/// What the init needs to install a filter once the spec's capabilities are in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// CAP_SYS_ADMIN is effective, or no_new_privs is set: nothing to do.
    Enough,
    /// no_new_privs is not set and CAP_SYS_ADMIN is not effective: libcontainer is given
    /// CAP_SYS_ADMIN in the permitted set (`added`: it was not there), the init raises it for
    /// the `seccomp(2)` call and drops it again right after, before the workload is exec'd.
    /// runc installs such a filter before its last capability drop, which comes to the same.
    Borrow { added: bool },
}

const CAP_SYS_ADMIN: u32 = 21;

/// The [`Privilege`] `process` needs; `nnp` is no_new_privs as the runtime will set it.
pub fn privilege(process: &oci_spec::runtime::Process, nnp: bool) -> Privilege {
    use oci_spec::runtime::Capability;
    let Some(caps) = process.capabilities() else {
        // libcontainer drops nothing: the init keeps every capability it has
        return Privilege::Enough;
    };
    let has = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.as_ref()
            .is_some_and(|s| s.contains(&Capability::SysAdmin))
    };
    if nnp || has(caps.effective()) {
        return Privilege::Enough;
    }
    Privilege::Borrow {
        added: !has(caps.permitted()),
    }
}

/// The filter runr installs for `process` confined by `spec`'s profile, and the privilege it
/// needs, or `None` when libcontainer is to load the profile instead (see [`handled`]; also a
/// profile that would forbid the capset(2) that gives CAP_SYS_ADMIN back).
pub fn plan(
    spec: &Spec,
    process: Option<&oci_spec::runtime::Process>,
    nnp: bool,
    root: &Path,
) -> Result<Option<(Filter, Privilege)>, SeccompError> {
    let Some(profile) = of_spec(spec) else {
        return Ok(None);
    };
    let privilege = process.map_or(Privilege::Enough, |p| privilege(p, nnp));
    if matches!(privilege, Privilege::Borrow { .. }) && !allows_capset(profile) {
        return Ok(None);
    }
    Ok(Some((prepare(profile, root)?, privilege)))
}

/// Adds CAP_SYS_ADMIN to `process`'s permitted set (see [`Privilege::Borrow`]).
pub fn lend_sys_admin(process: &mut oci_spec::runtime::Process) {
    use oci_spec::runtime::Capability;
    if let Some(mut caps) = process.capabilities().clone() {
        let mut permitted = caps.permitted().clone().unwrap_or_default();
        permitted.insert(Capability::SysAdmin);
        caps.set_permitted(Some(permitted));
        process.set_capabilities(Some(caps));
    }
}

/// Installs `f` in the init, borrowing CAP_SYS_ADMIN as `privilege` says.
pub fn install_with(f: &Filter, privilege: Privilege) -> io::Result<()> {
    let Privilege::Borrow { added } = privilege else {
        return install(f);
    };
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut caps = capget().map_err(|e| ctx("reading capabilities", e))?;
    let (word, bit) = ((CAP_SYS_ADMIN / 32) as usize, 1u32 << (CAP_SYS_ADMIN % 32));
    let was_effective = caps[word].effective & bit != 0;
    caps[word].effective |= bit;
    capset(&caps).map_err(|e| ctx("raising CAP_SYS_ADMIN to install the seccomp filter", e))?;
    install(f)?;
    if !was_effective {
        caps[word].effective &= !bit;
    }
    if added {
        caps[word].permitted &= !bit;
    }
    capset(&caps).map_err(|e| {
        ctx(
            "dropping CAP_SYS_ADMIN after installing the seccomp filter",
            e,
        )
    })
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> io::Result<[CapData; 2]> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: a v3 header and the two data structs v3 reads and writes
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(d)
}

/// Whether capability number `cap` is in this thread's effective set.
pub fn has_effective_cap(cap: u32) -> bool {
    capget().is_ok_and(|d| d[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
}

fn capset(d: &[CapData; 2]) -> io::Result<()> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: as for capget; the kernel only reads the data
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn notify_and_unknown_flags_are_left_to_libcontainer() {
        let base = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]});
        assert!(handled(&profile(base.clone())));
        let mut n = base.clone();
        n["syscalls"][0]["action"] = json!("SCMP_ACT_NOTIFY");
        assert!(!handled(&profile(n)));
        let mut f = base.clone();
        f["flags"] = json!(["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
        assert!(handled(&profile(f.clone())));
        assert_eq!(
            flags(&profile(f)),
            SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
        let mut w = base;
        w["flags"] = json!(["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]);
        assert!(!handled(&profile(w)));
    }

    #[test]
    fn compiled_once_then_read_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(json!({"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": ["read", "write", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                                   {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}]}));
        let first = prepare(&p, dir.path()).unwrap();
        assert_eq!(first, compile(&p).unwrap());
        let cached: Vec<_> = std::fs::read_dir(dir.path().join(".seccomp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(cached.len(), 1, "{cached:?}");
        assert_eq!(std::fs::read(&cached[0]).unwrap(), first.program);
        // a broken cache entry is replaced, not installed
        std::fs::write(&cached[0], b"garbage").unwrap();
        assert_eq!(prepare(&p, dir.path()).unwrap(), first);
        assert_eq!(std::fs::read(&cached[0]).unwrap(), first.program);
        // another profile gets another entry
        let mut other = p.clone();
        other.set_default_action(LinuxSeccompAction::ScmpActKillProcess);
        assert_ne!(prepare(&other, dir.path()).unwrap(), first);
        assert_eq!(
            std::fs::read_dir(dir.path().join(".seccomp"))
                .unwrap()
                .count(),
            2
        );
    }

    #[test]
    fn capset_must_stay_callable_with_any_arguments() {
        let deny_all = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []});
        assert!(!allows_capset(&profile(deny_all)));
        let allow_all = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []});
        assert!(allows_capset(&profile(allow_all)));
        let listed = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "capset"], "action": "SCMP_ACT_ALLOW"}]});
        assert!(allows_capset(&profile(listed)));
        let denied = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["capset"], "action": "SCMP_ACT_ERRNO"}]});
        assert!(!allows_capset(&profile(denied)));
        let conditional = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["capset"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]});
        assert!(!allows_capset(&profile(conditional)));
    }

    #[test]
    fn a_bad_trace_errno_is_named() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_TRACE", "errnoRet": 70000}]}));
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("70000"), "{e}");
    }
}
