//! The results cache, one file per (network, container id, interface), as libcni keeps it
//! under `<cache>/results/<network>-<id>-<ifname>`. rcd also keeps the network config and the
//! runtime config (port mappings...) there, so a DEL after a restart runs exactly what was
//! ADDed, with the same port mappings portmap needs to find its rules.

use super::CniError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

const KIND: &str = "rcdCniCacheV1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub kind: String,
    pub container_id: String,
    pub if_name: String,
    pub network_name: String,
    /// Empty when the namespace was unknown.
    pub netns: String,
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    /// The conflist the ADD ran.
    pub config: Value,
    /// The last plugin's result; absent while the ADD is running (or if rcd died in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl CacheEntry {
    pub(crate) fn new(
        container_id: &str,
        if_name: &str,
        network_name: &str,
        netns: &str,
        cni_args: &[(String, String)],
        capability_args: &Map<String, Value>,
        config: &Value,
    ) -> Self {
        CacheEntry {
            kind: KIND.into(),
            container_id: container_id.into(),
            if_name: if_name.into(),
            network_name: network_name.into(),
            netns: netns.into(),
            cni_args: cni_args.to_vec(),
            capability_args: capability_args.clone(),
            config: config.clone(),
            result: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// A cache kept in `<dir>/results/`.
    pub fn new(dir: &Path) -> Self {
        ResultCache {
            dir: dir.join("results"),
        }
    }

    pub fn path(&self, network: &str, container_id: &str, if_name: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{if_name}"))
    }

    pub fn get(
        &self,
        network: &str,
        container_id: &str,
        if_name: &str,
    ) -> Result<Option<CacheEntry>, CniError> {
        read(&self.path(network, container_id, if_name))
    }

    /// Written to a temporary file and renamed, so a crash leaves the old entry or the new.
    /// Not fsync'ed, as libcni does not: what an entry describes (veths, iptables rules, a
    /// pinned netns) does not outlive a power loss either, and each ADD writes two entries
    /// per interface.
    pub fn put(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(err)?;
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", std::process::id(), fastrand::u64(..)));
        let bytes = serde_json::to_vec(entry).expect("a cache entry serializes");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }

    pub fn remove(&self, network: &str, container_id: &str, if_name: &str) -> Result<(), CniError> {
        let path = self.path(network, container_id, if_name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }

    /// Every entry of one container (all its networks and interfaces).
    pub fn entries_of(&self, container_id: &str) -> Result<Vec<CacheEntry>, CniError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CniError::Cache {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let needle = format!("-{container_id}-");
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|source| CniError::Cache {
                path: self.dir.clone(),
                source,
            })?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.contains(&needle) {
                continue;
            }
            if let Some(entry) = read(&e.path())? {
                if entry.container_id == container_id {
                    out.push(entry);
                }
            }
        }
        out.sort_by(|a, b| (&a.network_name, &a.if_name).cmp(&(&b.network_name, &b.if_name)));
        Ok(out)
    }
}

fn read(path: &Path) -> Result<Option<CacheEntry>, CniError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CniError::Cache {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let entry: CacheEntry = serde_json::from_slice(&bytes).map_err(|e| CniError::CorruptCache {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if entry.kind != KIND {
        return Err(CniError::CorruptCache {
            path: path.to_path_buf(),
            reason: format!("unknown kind {:?}", entry.kind),
        });
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let mut caps = Map::new();
        caps.insert("portMappings".into(), serde_json::json!([{"hostPort": 80}]));
        let mut e = CacheEntry::new(
            "c1",
            "eth0",
            "net-a",
            "/run/x",
            &[("K".into(), "V".into())],
            &caps,
            &serde_json::json!({"name": "net-a"}),
        );
        cache.put(&e).unwrap();
        e.result = Some(serde_json::json!({"cniVersion": "1.0.0"}));
        cache.put(&e).unwrap();
        assert_eq!(cache.get("net-a", "c1", "eth0").unwrap().unwrap(), e);
        let lo = CacheEntry::new("c1", "lo", "lo-net", "", &[], &Map::new(), &Value::Null);
        cache.put(&lo).unwrap();
        let other = CacheEntry::new("c10", "lo", "lo-net", "", &[], &Map::new(), &Value::Null);
        cache.put(&other).unwrap();
        let names: Vec<_> = cache
            .entries_of("c1")
            .unwrap()
            .into_iter()
            .map(|e| e.network_name)
            .collect();
        assert_eq!(names, ["lo-net", "net-a"]);
        cache.remove("net-a", "c1", "eth0").unwrap();
        cache.remove("net-a", "c1", "eth0").unwrap();
        assert!(cache.get("net-a", "c1", "eth0").unwrap().is_none());
        std::fs::write(cache.path("bad", "c2", "eth0"), "{").unwrap();
        let err = cache.get("bad", "c2", "eth0").unwrap_err().to_string();
        assert!(err.contains("corrupt cni cache"), "{err}");
    }
}
