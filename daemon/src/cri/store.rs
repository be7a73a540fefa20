//! The sandbox and container stores: in memory for the lists kubelet makes every second,
//! one JSON file per object under `<root>/cri/{sandboxes,containers}/` (written to a temp
//! file, fsynced, renamed) so they survive a restart.

use base64::Engine;
use k8s_cri::v1 as cri;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn b64(m: &impl Message) -> String {
    base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec())
}

fn unb64<M: Message + Default>(s: &str) -> Option<M> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    M::decode(bytes.as_slice()).ok()
}

mod pb_b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer, M: Message>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64(m))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>, M: Message + Default>(
        d: D,
    ) -> Result<M, D::Error> {
        let s = String::deserialize(d)?;
        unb64(&s).ok_or_else(|| serde::de::Error::custom("invalid protobuf"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// A pod sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// `<name>_<namespace>_<uid>_<attempt>`, unique.
    pub name: String,
    #[serde(with = "pb_b64")]
    pub config: cri::PodSandboxConfig,
    pub created_at: i64,
    pub state: SandboxState,
    /// The pinned network namespace; `None` with host networking.
    pub netns: Option<PathBuf>,
    /// resolv.conf, hostname, hosts.
    pub pod_dir: PathBuf,
    pub cgroup_parent: String,
    /// Of the pause task while it runs.
    pub pid: u32,
    pub ips: Vec<String>,
    /// Set once StopPodSandbox has released the network.
    #[serde(default)]
    pub network_down: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    pub fn to_cri(self) -> cri::ContainerState {
        match self {
            ContainerState::Created => cri::ContainerState::ContainerCreated,
            ContainerState::Running => cri::ContainerState::ContainerRunning,
            ContainerState::Exited => cri::ContainerState::ContainerExited,
            ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
        }
    }
}

/// A container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    /// `<name>_<sandbox name>_<attempt>`, unique.
    pub name: String,
    #[serde(with = "pb_b64")]
    pub config: cri::ContainerConfig,
    /// The image as named by the request, and the resolved image id (config digest) and
    /// repo digest.
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub state: ContainerState,
    /// Absolute log path (sandbox log directory + container log path), if any.
    pub log_path: Option<PathBuf>,
    /// The container's uid/gid/groups as resolved from the image.
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// An object of the store: its record behind a lock.
pub type Entry<T> = Arc<Mutex<T>>;

struct Table<T> {
    dir: PathBuf,
    items: RwLock<HashMap<String, Entry<T>>>,
}

impl<T: Serialize + for<'de> Deserialize<'de> + Clone> Table<T> {
    fn open(dir: PathBuf, id_of: impl Fn(&T) -> String) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let mut items = HashMap::new();
        let rd = std::fs::read_dir(&dir).map_err(|source| StoreError::Io {
            what: "reading",
            path: dir.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<T>(&b).ok())
                {
                    Some(r) => {
                        items.insert(id_of(&r), Arc::new(Mutex::new(r)));
                    }
                    None => tracing::warn!(path = %p.display(), "unreadable cri record: ignored"),
                }
            } else if p.extension().is_some_and(|x| x == "tmp") {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(Table {
            dir,
            items: RwLock::new(items),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn save(&self, id: &str, rec: &T) -> Result<(), StoreError> {
        let path = self.path(id);
        let tmp = self.dir.join(format!("{id}.tmp"));
        let io = |what| {
            let path = path.clone();
            move |source| StoreError::Io { what, path, source }
        };
        let data = serde_json::to_vec(rec).expect("a record serializes");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io("writing"))?;
            f.write_all(&data).map_err(io("writing"))?;
            f.sync_all().map_err(io("syncing"))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("renaming"))?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.items.write().unwrap().remove(id);
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                what: "removing",
                path: self.path(id),
                source,
            }),
        }
    }
}

/// Both stores.
pub struct Store {
    sandboxes: Table<SandboxRecord>,
    containers: Table<ContainerRecord>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            sandboxes: Table::open(dir.join("sandboxes"), |r: &SandboxRecord| r.id.clone())?,
            containers: Table::open(dir.join("containers"), |r: &ContainerRecord| r.id.clone())?,
        })
    }

    pub fn sandbox(&self, id: &str) -> Option<Entry<SandboxRecord>> {
        let items = self.sandboxes.items.read().unwrap();
        items
            .get(id)
            .cloned()
            .or_else(|| super::resolve_id(items.keys(), id).and_then(|k| items.get(&k).cloned()))
    }

    pub fn container(&self, id: &str) -> Option<Entry<ContainerRecord>> {
        let items = self.containers.items.read().unwrap();
        items
            .get(id)
            .cloned()
            .or_else(|| super::resolve_id(items.keys(), id).and_then(|k| items.get(&k).cloned()))
    }

    pub fn sandboxes(&self) -> Vec<Entry<SandboxRecord>> {
        self.sandboxes
            .items
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    pub fn containers(&self) -> Vec<Entry<ContainerRecord>> {
        self.containers
            .items
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// Adds a sandbox unless its name is taken (returns the holder's id then).
    pub fn add_sandbox(&self, rec: SandboxRecord) -> Result<Result<(), String>, StoreError> {
        let mut items = self.sandboxes.items.write().unwrap();
        if let Some(other) = items.values().find(|s| s.lock().unwrap().name == rec.name) {
            return Ok(Err(other.lock().unwrap().id.clone()));
        }
        self.sandboxes.save(&rec.id, &rec)?;
        items.insert(rec.id.clone(), Arc::new(Mutex::new(rec)));
        Ok(Ok(()))
    }

    pub fn add_container(&self, rec: ContainerRecord) -> Result<Result<(), String>, StoreError> {
        let mut items = self.containers.items.write().unwrap();
        if let Some(other) = items.values().find(|s| s.lock().unwrap().name == rec.name) {
            return Ok(Err(other.lock().unwrap().id.clone()));
        }
        self.containers.save(&rec.id, &rec)?;
        items.insert(rec.id.clone(), Arc::new(Mutex::new(rec)));
        Ok(Ok(()))
    }

    pub fn save_sandbox(&self, rec: &SandboxRecord) -> Result<(), StoreError> {
        self.sandboxes.save(&rec.id, rec)
    }

    pub fn save_container(&self, rec: &ContainerRecord) -> Result<(), StoreError> {
        self.containers.save(&rec.id, rec)
    }

    pub fn remove_sandbox(&self, id: &str) -> Result<(), StoreError> {
        self.sandboxes.remove(id)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), StoreError> {
        self.containers.remove(id)
    }
}
