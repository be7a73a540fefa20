//! Image records: name → what a pull resolved, per namespace.
//!
//! TEMPORARY: until the metadata DB (redb, `metadata/`) lands, the records live in one JSON
//! file, `<root>/images.json`, rewritten atomically (temp file, fsync, rename) on every change.
//! Everything goes through [`ImageStore`], so swapping in the metadata DB touches only this
//! file.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    /// The index if the reference named one, else the manifest.
    pub target: Descriptor,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// `os/arch[/variant]`
    pub platform: String,
    /// Manifest + config + layers.
    pub size: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// namespace → name → record
    namespaces: BTreeMap<String, BTreeMap<String, ImageRecord>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt image records {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The image records of all namespaces (temporary JSON-file backend, see the module docs).
pub struct ImageStore {
    path: PathBuf,
    data: Mutex<File>,
}

impl ImageStore {
    /// Opens (or starts empty) `<root>/images.json`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageStoreError> {
        let path = root.join("images.json");
        let data = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ImageStoreError::Corrupt {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(source) => {
                return Err(ImageStoreError::Io {
                    op: "reading",
                    path,
                    source,
                })
            }
        };
        Ok(ImageStore {
            path,
            data: Mutex::new(data),
        })
    }

    pub fn list(&self, namespace: &str) -> Vec<ImageRecord> {
        let data = self.data.lock().unwrap();
        data.namespaces
            .get(namespace)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<ImageRecord> {
        let data = self.data.lock().unwrap();
        data.namespaces.get(namespace)?.get(name).cloned()
    }

    /// Creates or replaces the record (keeping the first `created_at`).
    pub fn put(&self, namespace: &str, mut record: ImageRecord) -> Result<(), ImageStoreError> {
        let mut data = self.data.lock().unwrap();
        let ns = data.namespaces.entry(namespace.to_owned()).or_default();
        if let Some(old) = ns.get(&record.name) {
            record.created_at = old.created_at.clone();
        }
        let old = ns.insert(record.name.clone(), record.clone());
        if let Err(e) = self.save(&data) {
            let ns = data.namespaces.get_mut(namespace).unwrap();
            match old {
                Some(old) => ns.insert(record.name.clone(), old),
                None => ns.remove(&record.name),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Removes the record; `false` if there was none.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<bool, ImageStoreError> {
        let mut data = self.data.lock().unwrap();
        let Some(ns) = data.namespaces.get_mut(namespace) else {
            return Ok(false);
        };
        let Some(old) = ns.remove(name) else {
            return Ok(false);
        };
        let empty = ns.is_empty();
        if empty {
            data.namespaces.remove(namespace);
        }
        if let Err(e) = self.save(&data) {
            data.namespaces
                .entry(namespace.to_owned())
                .or_default()
                .insert(name.to_owned(), old);
            return Err(e);
        }
        Ok(true)
    }

    /// Write temp + fsync + rename: a crash leaves the old file or the new one.
    fn save(&self, data: &File) -> Result<(), ImageStoreError> {
        let io = |op, source| ImageStoreError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(data).expect("serialising image records");
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&bytes).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("renaming", e))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> ImageRecord {
        let d = Descriptor {
            media_type: "m".into(),
            digest: "sha256:00".into(),
            size: 1,
        };
        ImageRecord {
            name: name.into(),
            target: d.clone(),
            manifest: d.clone(),
            config: d,
            layers: vec![],
            platform: "linux/amd64".into(),
            size: 1,
            created_at: "t0".into(),
            updated_at: "t0".into(),
        }
    }

    #[test]
    fn persists_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let s = ImageStore::open(dir.path()).unwrap();
        s.put("default", rec("a")).unwrap();
        s.put("other", rec("b")).unwrap();
        let s = ImageStore::open(dir.path()).unwrap();
        assert_eq!(s.list("default").len(), 1);
        assert!(s.get("default", "b").is_none());
        assert!(s.delete("other", "b").unwrap());
        assert!(!s.delete("other", "b").unwrap());
        assert!(ImageStore::open(dir.path())
            .unwrap()
            .list("other")
            .is_empty());
    }
}
