//! Runs in the container's init just before it execs the workload.

use libcontainer::workload::{
    default::get_executor, Executor, ExecutorError, ExecutorValidationError,
};
use oci_spec::runtime::Spec;

/// libcontainer's default executor, preceded by a reset of signal dispositions and the signal
/// mask: runr ignores SIGPIPE (so a hook that closes its stdin early cannot kill it), and an
/// ignored signal stays ignored across exec. The workload must start with the defaults, as it
/// does under runc.
#[derive(Clone)]
pub struct RunrExecutor;

impl Executor for RunrExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals();
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
