//! One module per runc command; `main` dispatches here.

pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;

use anyhow::{bail, Context, Result};
use libcgroups::common::{AnyCgroupManager, CgroupConfig};
use libcontainer::container::state::State;
use libcontainer::container::Container;
use std::path::PathBuf;

/// Global options every command needs.
pub struct Global {
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

impl Global {
    /// The state directory, created (0700) on first use as runc does.
    pub fn ensure_root(&self) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        if !self.root.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .with_context(|| {
                    format!("failed to create root directory {}", self.root.display())
                })?;
        }
        std::fs::canonicalize(&self.root)
            .with_context(|| format!("failed to resolve root directory {}", self.root.display()))
    }

    pub fn container_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// Loads a container, with an error that names it when it does not exist.
    pub fn load(&self, id: &str) -> Result<Container> {
        let dir = self.container_dir(id)?;
        if !State::file_path(&dir).exists() {
            bail!("container \"{id}\" does not exist");
        }
        Container::load(dir).with_context(|| format!("failed to load container \"{id}\""))
    }
}

/// IDs become directory names: the same characters runc allows.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        bail!("container id cannot be empty");
    }
    if id == "." || id == ".." {
        bail!("invalid container id {id:?}");
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.')))
    {
        bail!("invalid container id {id:?}: character {c:?} not allowed (use letters, digits, _ + - .)");
    }
    Ok(())
}

/// The cgroup manager of an existing container, built from the config saved at create.
pub fn cgroup_manager(container: &Container) -> Result<AnyCgroupManager> {
    let config = container.spec().with_context(|| {
        format!(
            "failed to read saved config of container \"{}\"",
            container.id()
        )
    })?;
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: config.cgroup_path,
        systemd_cgroup: container.systemd(),
        container_name: container.id().to_string(),
    })
    .with_context(|| format!("failed to open cgroup of container \"{}\"", container.id()))
}
