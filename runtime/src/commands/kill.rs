use super::{cgroup_manager, Global};
use anyhow::{bail, Context, Result};
use libcgroups::common::{CgroupManager, FreezerState};
use libcontainer::container::ContainerStatus;
use nix::errno::Errno;
use runr::signal::Sig;

/// Signals the init, or every process of the container. Unlike libcontainer's `kill`, this
/// writes no state: the container's state follows from its processes, and a `run` or `delete`
/// running at the same time must not find a state file recreated under it.
pub fn kill(g: &Global, id: &str, signal: &str, all: bool) -> Result<()> {
    let sig: Sig = signal.parse()?;
    let c = g.load(id)?;
    let status = c.status();
    if status == ContainerStatus::Stopped && !all {
        bail!("container \"{id}\" is not running");
    }
    let send = |pid: i32| -> Result<()> {
        // SAFETY: kill(2) with a validated signal number.
        if unsafe { libc::kill(pid, sig.0) } != 0 {
            let e = Errno::last();
            if e != Errno::ESRCH {
                return Err(e).with_context(|| {
                    format!("failed to signal process {pid} of container \"{id}\"")
                });
            }
        }
        Ok(())
    };
    if all {
        let cg = cgroup_manager(&c)?;
        // freeze so that nothing forks between listing the processes and signalling them
        let froze = status != ContainerStatus::Paused && cg.freeze(FreezerState::Frozen).is_ok();
        let pids = cg.get_all_pids();
        let result = pids
            .with_context(|| format!("failed to list processes of container \"{id}\""))
            .and_then(|pids| pids.iter().try_for_each(|p| send(p.as_raw())));
        if froze || (status == ContainerStatus::Paused && sig.0 == libc::SIGKILL) {
            let _ = cg.freeze(FreezerState::Thawed);
        }
        return result;
    }
    let pid = c.pid().context("container has no init pid")?;
    send(pid.as_raw())?;
    if status == ContainerStatus::Paused && sig.0 == libc::SIGKILL {
        // frozen tasks do not die until thawed (cgroup v1)
        let _ = cgroup_manager(&c)?.freeze(FreezerState::Thawed);
    }
    Ok(())
}
