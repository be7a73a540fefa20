//! Volumes: directories under `<root>/volumes/<ns>/<name>/_data` with a `meta.json` beside
//! (labels, creation time, anonymous or not). Which containers use one is read from their
//! `rcd.io/volumes` labels by the caller.

use super::{check_name, io_err, NetError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub mountpoint: PathBuf,
    pub meta: VolumeMeta,
}

/// One entry of a container's `rcd.io/volumes` label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The host path (kind bind) or the volume's name.
    pub source: String,
    pub destination: String,
    pub readonly: bool,
    /// `bind`, `volume` or `anonymous`.
    pub kind: String,
}

/// The volumes a container's labels name.
pub fn mounts_of(labels: &BTreeMap<String, String>) -> Vec<VolumeMount> {
    labels
        .get(rcd_proto::labels::VOLUMES)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

#[derive(Debug)]
pub struct VolumeStore {
    dir: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl VolumeStore {
    pub fn new(dir: &Path) -> Self {
        VolumeStore {
            dir: dir.to_owned(),
            lock: Default::default(),
        }
    }

    fn vol_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.dir.join(ns).join(name)
    }

    fn read(&self, ns: &str, name: &str) -> Result<Option<Volume>, NetError> {
        let dir = self.vol_dir(ns, name);
        let meta_path = dir.join("meta.json");
        let meta: VolumeMeta = match std::fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| NetError::Io {
                op: "parsing",
                path: meta_path.clone(),
                source: std::io::Error::other(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &meta_path)(e)),
        };
        Ok(Some(Volume {
            name: name.to_owned(),
            mountpoint: dir.join("_data"),
            meta,
        }))
    }

    /// Makes a volume (`name` empty: an anonymous one with a random 64-hex name); an existing
    /// one is returned as it is, as docker's `volume create` does.
    pub fn create(
        &self,
        ns: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, NetError> {
        let anonymous = name.is_empty();
        let name = if anonymous {
            let mut b = [0u8; 32];
            fastrand::fill(&mut b);
            hex::encode(b)
        } else {
            check_name("volume", name)?;
            name.to_owned()
        };
        let _g = self.lock.lock().expect("volume lock");
        if let Some(v) = self.read(ns, &name)? {
            return Ok(v);
        }
        let dir = self.vol_dir(ns, &name);
        let data = dir.join("_data");
        std::fs::create_dir_all(&data).map_err(io_err("creating", &data))?;
        let meta = VolumeMeta {
            labels,
            created_at: chrono::Utc::now().to_rfc3339(),
            anonymous,
        };
        let path = dir.join("meta.json");
        let tmp = dir.join("meta.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&meta).expect("serialisable"))
            .map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        tracing::info!(namespace = %ns, volume = %name, anonymous, "volume created");
        Ok(Volume {
            name,
            mountpoint: data,
            meta,
        })
    }

    pub fn get(&self, ns: &str, name: &str) -> Result<Volume, NetError> {
        if check_name("volume", name).is_ok() {
            if let Some(v) = self.read(ns, name)? {
                return Ok(v);
            }
        }
        Err(NetError::NotFound(format!(
            "volume {name:?} not found in namespace {ns:?}"
        )))
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Volume>, NetError> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.dir.join(ns)) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = self.read(ns, &name)? {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a volume and its data (the caller checked nobody uses it); its size.
    pub fn remove(&self, ns: &str, name: &str) -> Result<u64, NetError> {
        let v = self.get(ns, name)?;
        let _g = self.lock.lock().expect("volume lock");
        let size = dir_size(&v.mountpoint);
        let dir = self.vol_dir(ns, name);
        // meta first: a half-removed volume is no volume
        let meta = dir.join("meta.json");
        std::fs::remove_file(&meta).map_err(io_err("removing", &meta))?;
        std::fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
        tracing::info!(namespace = %ns, volume = %name, "volume removed");
        Ok(size)
    }
}

/// Bytes of the regular files under `dir` (symlinks not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeStore::new(dir.path());
        let v = s
            .create("ns", "data", [("a".to_owned(), "b".to_owned())].into())
            .unwrap();
        assert!(v.mountpoint.ends_with("ns/data/_data") && v.mountpoint.is_dir());
        std::fs::write(v.mountpoint.join("f"), b"12345").unwrap();
        // again: the same volume, content kept
        let again = s.create("ns", "data", BTreeMap::new()).unwrap();
        assert_eq!(again.meta.labels["a"], "b");
        let anon = s.create("ns", "", BTreeMap::new()).unwrap();
        assert_eq!(anon.name.len(), 64);
        assert!(anon.meta.anonymous);
        assert_eq!(s.list("ns").unwrap().len(), 2);
        assert!(s.list("other").unwrap().is_empty());
        assert!(s.create("ns", "../x", BTreeMap::new()).is_err());
        assert!(matches!(s.get("ns", "nope"), Err(NetError::NotFound(_))));
        assert_eq!(s.remove("ns", "data").unwrap(), 5);
        assert!(!dir.path().join("ns/data").exists());
    }
}
