use super::Global;
use anyhow::{bail, Context, Result};
use libcontainer::container::ContainerStatus;
use nix::sys::signal::Signal;
use runr::signal::Sig;

pub fn kill(g: &Global, id: &str, signal: &str, all: bool) -> Result<()> {
    let sig: Sig = signal.parse()?;
    let mut c = g.load(id)?;
    let before = c.status();
    if before == ContainerStatus::Stopped && !all {
        bail!("container \"{id}\" is not running");
    }
    if let Ok(nix_sig) = Signal::try_from(sig.0) {
        c.kill(nix_sig, all)
            .with_context(|| format!("failed to send {nix_sig} to container \"{id}\""))?;
    } else {
        // libcontainer knows only the classic signals; deliver real-time ones ourselves
        let pid = c.pid().context("container has no init pid")?;
        // SAFETY: kill(2) with a validated signal number.
        if unsafe { libc::kill(pid.as_raw(), sig.0) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("failed to send signal {} to container \"{id}\"", sig.0));
        }
        return Ok(());
    }
    // libcontainer records "stopped" after any signal; a container that survives it (a paused
    // one, or one that handles the signal) keeps the state it had.
    if sig.0 != libc::SIGKILL
        && matches!(before, ContainerStatus::Paused | ContainerStatus::Created)
    {
        c.set_status(before).save()?;
    }
    Ok(())
}
