use super::Global;
use anyhow::{bail, Context, Result};
use libcontainer::container::ContainerStatus;

pub fn pause(g: &Global, id: &str) -> Result<()> {
    let mut c = g.load(id)?;
    if c.status() != ContainerStatus::Running {
        bail!(
            "cannot pause container \"{id}\": it is {}, not running",
            super::state::status_str(c.status())
        );
    }
    c.pause()
        .with_context(|| format!("failed to pause container \"{id}\""))
}

pub fn resume(g: &Global, id: &str) -> Result<()> {
    let mut c = g.load(id)?;
    if c.status() != ContainerStatus::Paused {
        bail!(
            "cannot resume container \"{id}\": it is {}, not paused",
            super::state::status_str(c.status())
        );
    }
    c.resume()
        .with_context(|| format!("failed to resume container \"{id}\""))
}
