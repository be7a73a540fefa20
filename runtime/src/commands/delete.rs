use super::Global;
use anyhow::{bail, Context, Result};
use libcontainer::container::state::State;
use libcontainer::container::ContainerStatus;

pub fn delete(g: &Global, id: &str, force: bool) -> Result<()> {
    let dir = g.container_dir(id)?;
    if !State::file_path(&dir).exists() {
        // An aborted create can leave a directory without state: nothing runs, remove it.
        if dir.is_dir() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("failed to remove {}", dir.display()))?;
        }
        if force {
            return Ok(());
        }
        bail!("container \"{id}\" does not exist");
    }
    let mut c = g.load(id)?;
    if !force
        && matches!(
            c.status(),
            ContainerStatus::Running | ContainerStatus::Paused
        )
    {
        bail!(
            "cannot delete container \"{id}\" that is not stopped: it is {} (use --force)",
            super::state::status_str(c.status())
        );
    }
    c.delete(force)
        .with_context(|| format!("failed to delete container \"{id}\""))?;
    let compat = runr::bundle::compat_bundle_dir(&g.root, id);
    if compat.exists() {
        std::fs::remove_dir_all(&compat)
            .with_context(|| format!("failed to remove {}", compat.display()))?;
    }
    Ok(())
}
