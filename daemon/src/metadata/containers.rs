//! Containers and namespace records, in the same database as images and snapshots.
//!
//! ```text
//! containers  "<ns>\0<id>"  → ContainerRecord (JSON: image, snapshot key, spec, labels)
//! namespaces  "<ns>"        → NamespaceRecord (JSON: labels), for namespaces made by hand
//! ```
//!
//! A container's rootfs is an active snapshot (key = [`ContainerRecord::snapshot_key`]): the
//! collector keeps active snapshots, so a container's rootfs (and the image layers under it)
//! lives as long as the container.

use super::{
    decode, encode, key, split_key, validate_labels, validate_name, validate_namespace, Labels,
    Metadata, MetadataError, ReadTx, Result, WriteTx,
};
use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");

/// A container: what to run, not a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The normalised image name it was made from.
    pub image: String,
    /// Its rootfs snapshot; `None` once deleted with the snapshot kept.
    pub snapshot_key: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    /// The OCI runtime spec (JSON), `root.path` relative to the bundle (`rootfs`).
    pub spec: serde_json::Value,
    /// The shim binary its tasks run under; `None`: the daemon's default.
    #[serde(default)]
    pub runtime: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A namespace made with `namespaces create` (or labelled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    pub created: DateTime<Utc>,
}

fn missing_table(e: &redb::TableError) -> bool {
    matches!(e, redb::TableError::TableDoesNotExist(_))
}

impl Metadata {
    /// Creates the container and namespace tables (a database made before they existed
    /// lacks them; reads of a missing table would fail).
    pub fn open_container_tables(&self) -> Result<()> {
        self.write(|tx| {
            tx.tx
                .open_table(CONTAINERS)
                .map_err(tx.err("opening containers"))?;
            tx.tx
                .open_table(NAMESPACES)
                .map_err(tx.err("opening namespaces"))?;
            Ok(())
        })
    }

    pub fn container(&self, ns: &str, id: &str) -> Result<Option<ContainerRecord>> {
        self.read(|tx| tx.container(ns, id))
    }

    pub fn containers(&self, ns: &str) -> Result<Vec<ContainerRecord>> {
        self.read(|tx| tx.containers(ns))
    }
}

macro_rules! container_reads {
    () => {
        /// One container.
        pub fn container(&self, ns: &str, id: &str) -> Result<Option<ContainerRecord>> {
            validate_namespace(ns)?;
            self.get(CONTAINERS, "container", &key(ns, id))
        }

        /// The containers of a namespace, sorted by id.
        pub fn containers(&self, ns: &str) -> Result<Vec<ContainerRecord>> {
            validate_namespace(ns)?;
            self.scan(CONTAINERS, "container", ns)
        }

        /// The record of a namespace made by hand.
        pub fn namespace_record(&self, ns: &str) -> Result<Option<NamespaceRecord>> {
            validate_namespace(ns)?;
            let t = match self.tx.open_table(NAMESPACES) {
                Ok(t) => t,
                Err(e) if missing_table(&e) => return Ok(None),
                Err(e) => return Err(self.md.err("opening namespaces")(e)),
            };
            let v = t.get(ns).map_err(self.md.err("reading"))?;
            v.map(|v| decode("namespace", ns, v.value())).transpose()
        }

        /// Every namespace: those made by hand and those holding any record, sorted.
        pub fn all_namespaces(&self) -> Result<Vec<String>> {
            let mut out: std::collections::BTreeSet<String> =
                self.namespaces()?.into_iter().collect();
            for (def, by_key) in [(NAMESPACES, false), (CONTAINERS, true)] {
                let t = match self.tx.open_table(def) {
                    Ok(t) => t,
                    Err(e) if missing_table(&e) => continue,
                    Err(e) => return Err(self.md.err("opening a table")(e)),
                };
                for item in t.iter().map_err(self.md.err("listing"))? {
                    let (k, _) = item.map_err(self.md.err("listing"))?;
                    let k = k.value();
                    out.insert(if by_key { split_key(k).0 } else { k }.to_owned());
                }
            }
            Ok(out.into_iter().collect())
        }
    };
}

impl ReadTx<'_> {
    container_reads!();
}

impl WriteTx<'_> {
    container_reads!();

    /// Records a new container; `AlreadyExists` if the id is taken.
    pub fn create_container(&mut self, ns: &str, c: &ContainerRecord) -> Result<()> {
        validate_namespace(ns)?;
        validate_name("container id", &c.id)?;
        validate_labels(&c.labels)?;
        if self.container(ns, &c.id)?.is_some() {
            return Err(MetadataError::AlreadyExists {
                what: "container",
                namespace: ns.to_owned(),
                name: c.id.clone(),
            });
        }
        self.check_name_free(ns, c)?;
        self.put(CONTAINERS, &key(ns, &c.id), &encode(c))
    }

    /// A container's `rcd.io/name` (rnerd's names) is unique in its namespace: checked in
    /// the transaction that writes it, so two clients racing for one name cannot both win.
    fn check_name_free(&self, ns: &str, c: &ContainerRecord) -> Result<()> {
        let Some(name) = c.labels.get(rcd_proto::labels::NAME) else {
            return Ok(());
        };
        let taken = self
            .containers(ns)?
            .into_iter()
            .any(|o| o.id != c.id && o.labels.get(rcd_proto::labels::NAME) == Some(name));
        if taken {
            return Err(MetadataError::AlreadyExists {
                what: "container name",
                namespace: ns.to_owned(),
                name: name.clone(),
            });
        }
        Ok(())
    }

    /// Replaces a container's record; `NotFound` if it is gone.
    pub fn update_container(&mut self, ns: &str, c: &ContainerRecord) -> Result<()> {
        validate_namespace(ns)?;
        validate_labels(&c.labels)?;
        if self.container(ns, &c.id)?.is_none() {
            return Err(MetadataError::NotFound {
                what: "container",
                namespace: ns.to_owned(),
                name: c.id.clone(),
            });
        }
        self.check_name_free(ns, c)?;
        self.put(CONTAINERS, &key(ns, &c.id), &encode(c))
    }

    /// Removes a container's record; `NotFound` if absent.
    pub fn delete_container(&mut self, ns: &str, id: &str) -> Result<()> {
        validate_namespace(ns)?;
        if !self.del(CONTAINERS, &key(ns, id))? {
            return Err(MetadataError::NotFound {
                what: "container",
                namespace: ns.to_owned(),
                name: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Creates or replaces a namespace's record.
    pub fn put_namespace(&mut self, rec: &NamespaceRecord) -> Result<()> {
        validate_namespace(&rec.name)?;
        validate_labels(&rec.labels)?;
        self.put(NAMESPACES, &rec.name, &encode(rec))
    }

    /// Removes a namespace's record; whether there was one.
    pub fn delete_namespace_record(&mut self, ns: &str) -> Result<bool> {
        validate_namespace(ns)?;
        self.del(NAMESPACES, ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            image: "docker.io/library/busybox:latest".into(),
            snapshot_key: Some(id.into()),
            labels: Labels::from([("a".to_owned(), "b".to_owned())]),
            spec: serde_json::json!({"ociVersion": "1.0.2"}),
            runtime: None,
            created: Utc::now(),
            updated: Utc::now(),
        }
    }

    #[test]
    fn names_are_unique_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::open(dir.path().join("meta.db")).unwrap();
        md.open_container_tables().unwrap();
        let named = |id: &str, name: &str| {
            let mut r = rec(id);
            r.labels.insert(rcd_proto::labels::NAME.into(), name.into());
            r
        };
        md.write(|tx| tx.create_container("ns1", &named("c1", "web")))
            .unwrap();
        let e = md
            .write(|tx| tx.create_container("ns1", &named("c2", "web")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "container name \"web\" already exists in namespace \"ns1\""
        );
        // another namespace, another name, or no name: fine
        md.write(|tx| tx.create_container("ns2", &named("c2", "web")))
            .unwrap();
        md.write(|tx| tx.create_container("ns1", &named("c2", "db")))
            .unwrap();
        md.write(|tx| tx.create_container("ns1", &rec("c3")))
            .unwrap();
        // a rename onto a taken name fails; an update keeping its own name does not
        let e = md
            .write(|tx| tx.update_container("ns1", &named("c2", "web")))
            .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        md.write(|tx| tx.update_container("ns1", &named("c1", "web")))
            .unwrap();
    }

    #[test]
    fn containers_and_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::open(dir.path().join("meta.db")).unwrap();
        md.open_container_tables().unwrap();
        md.write(|tx| tx.create_container("ns1", &rec("c1")))
            .unwrap();
        md.write(|tx| tx.create_container("ns1", &rec("c0")))
            .unwrap();
        md.write(|tx| tx.create_container("ns2", &rec("c1")))
            .unwrap();
        let e = md
            .write(|tx| tx.create_container("ns1", &rec("c1")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
        let ids: Vec<_> = md
            .containers("ns1")
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["c0", "c1"]);
        assert_eq!(
            md.container("ns2", "c1").unwrap().unwrap(),
            rec_like("c1", &md)
        );
        md.write(|tx| {
            tx.put_namespace(&NamespaceRecord {
                name: "empty".into(),
                labels: Labels::new(),
                created: Utc::now(),
            })
        })
        .unwrap();
        let all = md.read(|tx| tx.all_namespaces()).unwrap();
        assert_eq!(all, ["empty", "ns1", "ns2"]);
        md.write(|tx| tx.delete_container("ns2", "c1")).unwrap();
        let e = md
            .write(|tx| tx.delete_container("ns2", "c1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
        assert!(md.write(|tx| tx.delete_namespace_record("empty")).unwrap());
        let all = md.read(|tx| tx.all_namespaces()).unwrap();
        assert_eq!(all, ["ns1"]);
    }

    fn rec_like(id: &str, md: &Metadata) -> ContainerRecord {
        let mut r = rec(id);
        let got = md.container("ns2", id).unwrap().unwrap();
        r.created = got.created;
        r.updated = got.updated;
        r
    }
}
