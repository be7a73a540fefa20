use super::Global;
use anyhow::{bail, Context, Result};
use libcontainer::container::ContainerStatus;

pub fn start(g: &Global, id: &str) -> Result<()> {
    let mut c = g.load(id)?;
    match c.status() {
        ContainerStatus::Created => {}
        ContainerStatus::Stopped => bail!("cannot start a container that has stopped"),
        s => bail!(
            "cannot start container \"{id}\": it is {}, not created",
            super::state::status_str(s)
        ),
    }
    c.start()
        .with_context(|| format!("failed to start container \"{id}\""))
}
