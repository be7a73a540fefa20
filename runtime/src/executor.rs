//! Runs in the container's init just before it execs the workload.

use libcontainer::workload::{
    default::get_executor, Executor, ExecutorError, ExecutorValidationError,
};
use oci_spec::runtime::{LinuxSeccomp, Spec};
use runr::seccomp::{Filter, Privilege};

/// libcontainer's default executor, preceded by a reset of signal dispositions and the signal
/// mask: runr ignores SIGPIPE (so a hook that closes its stdin early cannot kill it), and an
/// ignored signal stays ignored across exec. The workload must start with the defaults, as it
/// does under runc.
///
/// It also installs the seccomp filter runr compiled (or found cached) for the process, when
/// runr handles the profile (`runr::seccomp`), borrowing CAP_SYS_ADMIN as planned. For an
/// `exec` whose profile runr leaves to libcontainer, it loads it through libcontainer:
/// libcontainer 0.7 rebuilds the spec of an exec'd process without `linux.seccomp`, so the
/// process would run unfiltered (runc filters it like the container's init).
#[derive(Clone, Default)]
pub struct RunrExecutor {
    pub filter: Option<(Filter, Privilege)>,
    pub exec_seccomp: Option<LinuxSeccomp>,
}

impl Executor for RunrExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals();
        if let Some((filter, privilege)) = &self.filter {
            runr::seccomp::install_with(filter, *privilege)
                .map_err(|e| ExecutorError::Other(format!("installing the seccomp filter: {e}")))?;
        }
        if let Some(seccomp) = &self.exec_seccomp {
            load_exec_seccomp(seccomp)?;
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }
}

/// Every disposition back to SIG_DFL and an empty mask. Raw rt_sigaction, because glibc's
/// wrappers refuse the two real-time signals it reserves for itself, and those may be ignored too.
fn reset_signals() {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction/rt_sigprocmask with structs we own, in a process about to exec.
    unsafe {
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
}

/// Loads `seccomp` in the exec'd process, which by now has the container's capabilities. The
/// kernel accepts a filter from a process with CAP_SYS_ADMIN or with no_new_privs; without the
/// former, no_new_privs is set (runc loads the filter before dropping capabilities instead, which
/// libcontainer's exec path gives no hook for): a setuid binary run by such an exec does not gain
/// privileges.
fn load_exec_seccomp(seccomp: &LinuxSeccomp) -> Result<(), ExecutorError> {
    if !runr::seccomp::has_effective_cap(21 /* CAP_SYS_ADMIN */) {
        // SAFETY: prctl with integer arguments
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(ExecutorError::Other(format!(
                "setting no_new_privs for the seccomp filter: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    match libcontainer::seccomp::initialize_seccomp(seccomp) {
        Ok(None) => Ok(()),
        Ok(Some(fd)) => {
            // SAFETY: the fd was just returned to us and nothing else owns it
            unsafe { libc::close(fd) };
            Err(ExecutorError::Other(
                "seccomp notify actions are not supported for exec".into(),
            ))
        }
        Err(e) => Err(ExecutorError::Other(format!(
            "loading the container's seccomp filter: {e}"
        ))),
    }
}
