use super::Global;
use anyhow::Result;
use libcontainer::container::{Container, ContainerStatus};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// The status word of the OCI state (`created`, `running`, ...).
pub fn status_str(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

/// The OCI state as runc prints it (plus runc's `rootfs` and `owner`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateJson {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: &'static str,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

impl StateJson {
    pub fn of(c: &Container) -> Self {
        let status = c.status();
        // a stopped container's pid may have been reused: runc reports 0
        let pid = if status == ContainerStatus::Stopped {
            0
        } else {
            c.pid().map(|p| p.as_raw()).unwrap_or(0)
        };
        Self {
            oci_version: c.state.oci_version.clone(),
            id: c.id().to_string(),
            pid,
            status: status_str(status),
            bundle: c.bundle().clone(),
            rootfs: rootfs_of(c.bundle()),
            created: c
                .created()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_default(),
            owner: String::new(),
            annotations: c.state.annotations.clone().unwrap_or_default(),
        }
    }
}

fn rootfs_of(bundle: &std::path::Path) -> PathBuf {
    #[derive(serde::Deserialize)]
    struct Root {
        path: PathBuf,
    }
    #[derive(serde::Deserialize)]
    struct Cfg {
        root: Option<Root>,
    }
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Cfg>(&b).ok())
        .and_then(|c| c.root)
        .map(|r| {
            if r.path.is_absolute() {
                r.path
            } else {
                bundle.join(r.path)
            }
        })
        .unwrap_or_default()
}

pub fn state(g: &Global, id: &str) -> Result<()> {
    let c = g.load(id)?;
    println!("{}", serde_json::to_string_pretty(&StateJson::of(&c))?);
    Ok(())
}
