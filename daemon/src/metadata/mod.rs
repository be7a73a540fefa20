//! The metadata store: one `redb` database (embedded, transactional, crash-safe) holding the
//! namespaced records of images, snapshots and content labels, as containerd's `meta.db`.
//!
//! ```text
//! images     "<ns>\0<name>"   → ImageRecord (JSON)
//! snapshots  "<ns>\0<key>"    → SnapshotRecord (JSON)
//! content    "<ns>\0<digest>" → ContentRecord (JSON: labels, created)
//! leases     "<ns>\0<id>"     → LeaseRecord (JSON: expiry, the blobs and snapshots it keeps)
//! counters   "snapshot.id"    → u64 (last numeric snapshot id handed out)
//! ```
//!
//! The tables of later record kinds (containers) go next to these, keyed the same way, and
//! become roots of the garbage collector (see `gc.rs`).
//!
//! Every change goes through [`Metadata::write`]: the closure gets a [`WriteTx`], and
//! everything it did is committed atomically when it returns `Ok` (and discarded on `Err` or a
//! panic). redb commits with a durable two-phase write, so a `kill -9` at any point leaves the
//! state of the last committed transaction. Reads see one consistent snapshot
//! ([`Metadata::read`]).
//!
//! Namespaces (`default`, `k8s.io`, ...) are part of every key; names are validated (no NUL,
//! which separates the parts of a key, and bounded lengths).
//!
//! The database file is locked: one [`Metadata`] (cheap to clone) per file and process.

mod containers;

pub use containers::{ContainerRecord, NamespaceRecord};

use crate::content::Digest;
use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::debug;

/// Labels, as containerd keeps them (`containerd.io/gc.ref.content.config` = digest, ...).
pub type Labels = BTreeMap<String, String>;

/// The most metadata pages redb keeps in memory (9/10 read cache, 1/10 write buffer). The
/// daemon's metadata is a few hundred KB of pages, and every page redb does not cache is one
/// `pread` of the kernel's page cache away. Kept below the 512 KiB block of region-allocator
/// state redb writes (at open, and when it saves that state), which it would otherwise keep
/// cached for the daemon's life (seen under gdb: `Allocators::flush_to`).
const METADATA_CACHE_BYTES: usize = 512 << 10;

/// Longest namespace name (containerd: 76, DNS label-like).
pub const MAX_NAMESPACE_LEN: usize = 76;
/// Longest image name or snapshot key.
pub const MAX_NAME_LEN: usize = 4096;
/// Longest label key and value, and most labels on one record.
pub const MAX_LABEL_KEY_LEN: usize = 1024;
pub const MAX_LABEL_VALUE_LEN: usize = 4096;
pub const MAX_LABELS: usize = 256;

/// Label that keeps a snapshot or blob from the garbage collector.
pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
/// Prefix of labels that reference content by digest (`….config`, `….l.<i>`, `….m.<i>`).
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content.";
/// Prefix of labels that reference a snapshot by key (`….overlayfs` = the top chain ID).
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CONTENT: TableDefinition<&str, &[u8]> = TableDefinition::new("content");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const SNAPSHOT_ID: &str = "snapshot.id";

/// Errors of the metadata store, each naming what it was about.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("invalid label {key:?}: {reason}")]
    InvalidLabel { key: String, reason: &'static str },
    #[error("{what} {name:?} not found in namespace {namespace:?}")]
    NotFound {
        what: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{what} {name:?} already exists in namespace {namespace:?}")]
    AlreadyExists {
        what: &'static str,
        namespace: String,
        name: String,
    },
    #[error("metadata database {path}: {op}: {source}")]
    Db {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("corrupt {what} record {key:?}: {source}")]
    Corrupt {
        what: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

/// What an image name points at: a manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// An image: a name and what it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub target: Target,
    #[serde(default)]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// The manifest chosen for this host's (or the requested) platform when `target` is an
    /// index; the target itself otherwise. Recorded at pull time (containerd re-resolves it
    /// from the index on every use; one pull here fetches one platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Target>,
    /// `os/arch[/variant]` of that manifest's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// A lease: blobs and snapshots kept from the garbage collector until it is deleted or
/// expires (containerd's leases). A pull takes one for what it downloads and unpacks until
/// the image is recorded; one left by a killed daemon protects that work until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: String,
    #[serde(default)]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    /// After this the collector deletes the lease (`None`: never expires).
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default)]
    pub content: std::collections::BTreeSet<Digest>,
    #[serde(default)]
    pub snapshots: std::collections::BTreeSet<String>,
}

impl LeaseRecord {
    /// Whether the lease has expired at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// The kind of a snapshot, as in containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Writable, being changed (a container's rootfs, a layer being extracted).
    Active,
    /// Read-only view of a committed snapshot.
    View,
    /// Immutable; may be the parent of others.
    Committed,
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotKind::Active => "active",
            SnapshotKind::View => "view",
            SnapshotKind::Committed => "committed",
        })
    }
}

/// A snapshot: kind, parent (a committed snapshot's key), and where its files are
/// (`<snapshotter root>/snapshots/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub key: String,
    pub id: u64,
    pub kind: SnapshotKind,
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// Disk usage, measured when committed (`None` while active).
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub inodes: Option<u64>,
}

/// What the metadata knows of a blob: its labels (GC references, sources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRecord {
    pub digest: Digest,
    #[serde(default)]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

fn invalid(what: &'static str, name: &str, reason: &'static str) -> MetadataError {
    MetadataError::InvalidName {
        what,
        name: name.chars().take(200).collect(),
        reason,
    }
}

/// Checks a namespace name: 1 to 76 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
        return Err(invalid("namespace", ns, "must be 1 to 76 bytes"));
    }
    if !ns.bytes().next().unwrap().is_ascii_alphanumeric()
        || !ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "namespace",
            ns,
            "must be letters, digits, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks an image name or snapshot key: 1 to 4096 bytes, no NUL.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(what, name, "must be 1 to 4096 bytes"));
    }
    if name.contains('\0') {
        return Err(invalid(what, name, "must not contain NUL"));
    }
    Ok(())
}

/// Checks labels: at most 256, keys 1 to 1024 bytes, values up to 4096, no NUL.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    let bad = |key: &str, reason| MetadataError::InvalidLabel {
        key: key.chars().take(200).collect(),
        reason,
    };
    if labels.len() > MAX_LABELS {
        return Err(bad("", "more than 256 labels"));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY_LEN {
            return Err(bad(k, "key must be 1 to 1024 bytes"));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return Err(bad(k, "value longer than 4096 bytes"));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(bad(k, "contains NUL"));
        }
    }
    Ok(())
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}\0{name}")
}

fn split_key(k: &str) -> (&str, &str) {
    k.split_once('\0').unwrap_or(("", k))
}

/// The metadata database. Cheap to clone (shared handle). Its methods block (a write
/// transaction ends with an fsync'ed commit): from async code, call them in
/// `tokio::task::spawn_blocking` (or accept a few ms on the executor).
#[derive(Clone)]
pub struct Metadata {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    /// Held shared by work in progress ([`Metadata::lease`]), exclusively by the collector.
    gc: Arc<tokio::sync::RwLock<()>>,
}

/// Keeps the garbage collector from running while held: take one around a pull, an unpack
/// and the recording of the image, whose blobs and snapshots no image references yet.
/// (A coarse stand-in for containerd's leases: any number at once, GC waits for all.)
#[derive(Debug)]
pub struct Lease(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>);

/// Held by the collector while it marks and sweeps.
#[derive(Debug)]
pub struct GcLock(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>);

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("path", &self.path)
            .finish()
    }
}

impl Metadata {
    /// Opens (creating if needed) the database file at `path`. Fails if another handle (in
    /// this or another process) has it open.
    pub fn open(path: impl Into<PathBuf>) -> Result<Metadata> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MetadataError::Db {
                op: "creating its directory",
                path: path.clone(),
                source: Box::new(redb::Error::Io(e)),
            })?;
        }
        // redb caches up to 1 GiB of pages by default, kept for the daemon's life; the
        // metadata is small and the kernel's page cache holds the file anyway
        let db = redb::Builder::new()
            .set_cache_size(METADATA_CACHE_BYTES)
            .create(&path)
            .map_err(|e| MetadataError::Db {
                op: "opening",
                path: path.clone(),
                source: Box::new(e.into()),
            })?;
        let md = Metadata {
            db: Arc::new(db),
            path: Arc::new(path),
            gc: Arc::default(),
        };
        // create every table, so that reads never meet a missing one
        md.write(|tx| {
            tx.tx.open_table(IMAGES).map_err(tx.err("opening images"))?;
            tx.tx
                .open_table(SNAPSHOTS)
                .map_err(tx.err("opening snapshots"))?;
            tx.tx
                .open_table(CONTENT)
                .map_err(tx.err("opening content"))?;
            tx.tx.open_table(LEASES).map_err(tx.err("opening leases"))?;
            tx.tx
                .open_table(COUNTERS)
                .map_err(tx.err("opening counters"))?;
            Ok(())
        })?;
        debug!(path = %md.path.display(), "opened metadata");
        Ok(md)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A [`Lease`]: until it is dropped, no garbage collection runs (waits for a running one).
    pub async fn lease(&self) -> Lease {
        Lease(self.gc.clone().read_owned().await)
    }

    /// The collector's exclusive lock: waits for every [`Lease`] to be dropped.
    pub async fn gc_lock(&self) -> GcLock {
        GcLock(self.gc.clone().write_owned().await)
    }

    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> MetadataError {
        let path = (*self.path).clone();
        move |e| MetadataError::Db {
            op,
            path,
            source: Box::new(e.into()),
        }
    }

    /// Runs `f` in one write transaction: committed if it returns `Ok`, discarded otherwise.
    /// Write transactions are serialised (a second one waits for the first).
    pub fn write<T, E>(&self, f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<MetadataError>,
    {
        let tx = self
            .db
            .begin_write()
            .map_err(self.err("beginning a write transaction"))?;
        let mut wtx = WriteTx { tx: &tx, md: self };
        let out = f(&mut wtx)?;
        tx.commit()
            .map_err(self.err("committing a write transaction"))?;
        Ok(out)
    }

    /// As [`write`](Self::write), but the commit is not flushed to disk: it is visible at
    /// once and becomes durable with the next durable commit. For a step whose caller
    /// commits durably right after, so that the two cost one flush; a crash in between
    /// loses this commit, which the caller must be able to take.
    pub fn write_unsynced<T, E>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<MetadataError>,
    {
        let mut tx = self
            .db
            .begin_write()
            .map_err(self.err("beginning a write transaction"))?;
        tx.set_durability(redb::Durability::None);
        let mut wtx = WriteTx { tx: &tx, md: self };
        let out = f(&mut wtx)?;
        tx.commit()
            .map_err(self.err("committing a write transaction"))?;
        Ok(out)
    }

    /// Runs `f` on one consistent read snapshot.
    pub fn read<T, E>(&self, f: impl FnOnce(&ReadTx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<MetadataError>,
    {
        let tx = self
            .db
            .begin_read()
            .map_err(self.err("beginning a read transaction"))?;
        f(&ReadTx { tx: &tx, md: self })
    }

    /// One image (a read transaction of its own).
    pub fn image(&self, ns: &str, name: &str) -> Result<Option<ImageRecord>> {
        self.read(|tx| tx.image(ns, name))
    }

    /// The images of a namespace, by name.
    pub fn images(&self, ns: &str) -> Result<Vec<ImageRecord>> {
        self.read(|tx| tx.images(ns))
    }

    /// Removes an image record; `NotFound` if absent. Its content and snapshots stay until
    /// the garbage collector finds them unreferenced.
    pub fn delete_image(&self, ns: &str, name: &str) -> Result<()> {
        self.write(|tx| tx.delete_image(ns, name))
    }

    /// Every namespace that holds any record.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        self.read(|tx| tx.namespaces())
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, key: &str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|source| MetadataError::Corrupt {
        what,
        key: key.replace('\0', "/"),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

macro_rules! reads {
    () => {
        /// One image.
        pub fn image(&self, ns: &str, name: &str) -> Result<Option<ImageRecord>> {
            validate_namespace(ns)?;
            self.get(IMAGES, "image", &key(ns, name))
        }

        /// The images of a namespace, sorted by name.
        pub fn images(&self, ns: &str) -> Result<Vec<ImageRecord>> {
            validate_namespace(ns)?;
            self.scan(IMAGES, "image", ns)
        }

        /// One snapshot record.
        pub fn snapshot(&self, ns: &str, key_: &str) -> Result<Option<SnapshotRecord>> {
            validate_namespace(ns)?;
            self.get(SNAPSHOTS, "snapshot", &key(ns, key_))
        }

        /// The snapshots of a namespace, sorted by key.
        pub fn snapshots(&self, ns: &str) -> Result<Vec<SnapshotRecord>> {
            validate_namespace(ns)?;
            self.scan(SNAPSHOTS, "snapshot", ns)
        }

        /// The labels of a blob, if it has a record.
        pub fn content(&self, ns: &str, digest: &Digest) -> Result<Option<ContentRecord>> {
            validate_namespace(ns)?;
            self.get(CONTENT, "content", &key(ns, digest.as_str()))
        }

        /// The content records of a namespace.
        pub fn contents(&self, ns: &str) -> Result<Vec<ContentRecord>> {
            validate_namespace(ns)?;
            self.scan(CONTENT, "content", ns)
        }

        /// One lease.
        pub fn lease(&self, ns: &str, id: &str) -> Result<Option<LeaseRecord>> {
            validate_namespace(ns)?;
            self.get(LEASES, "lease", &key(ns, id))
        }

        /// The leases of a namespace, sorted by id.
        pub fn leases(&self, ns: &str) -> Result<Vec<LeaseRecord>> {
            validate_namespace(ns)?;
            self.scan(LEASES, "lease", ns)
        }

        /// Every namespace that holds any record, sorted.
        pub fn namespaces(&self) -> Result<Vec<String>> {
            let mut out = std::collections::BTreeSet::new();
            for def in [IMAGES, SNAPSHOTS, CONTENT, LEASES] {
                let t = self
                    .tx
                    .open_table(def)
                    .map_err(self.md.err("opening a table"))?;
                for item in t.iter().map_err(self.md.err("listing"))? {
                    let (k, _) = item.map_err(self.md.err("listing"))?;
                    out.insert(split_key(k.value()).0.to_owned());
                }
            }
            Ok(out.into_iter().collect())
        }

        fn get<T: DeserializeOwned>(
            &self,
            def: TableDefinition<&str, &[u8]>,
            what: &'static str,
            k: &str,
        ) -> Result<Option<T>> {
            let t = self
                .tx
                .open_table(def)
                .map_err(self.md.err("opening a table"))?;
            let v = t.get(k).map_err(self.md.err("reading"))?;
            v.map(|v| decode(what, k, v.value())).transpose()
        }

        fn scan<T: DeserializeOwned>(
            &self,
            def: TableDefinition<&str, &[u8]>,
            what: &'static str,
            ns: &str,
        ) -> Result<Vec<T>> {
            let t = self
                .tx
                .open_table(def)
                .map_err(self.md.err("opening a table"))?;
            // "<ns>\0" .. "<ns>\x01": exactly the keys of this namespace
            let (lo, hi) = (format!("{ns}\0"), format!("{ns}\u{1}"));
            let mut out = Vec::new();
            for item in t
                .range(lo.as_str()..hi.as_str())
                .map_err(self.md.err("listing"))?
            {
                let (k, v) = item.map_err(self.md.err("listing"))?;
                out.push(decode(what, k.value(), v.value())?);
            }
            Ok(out)
        }
    };
}

/// A read transaction: a consistent view of the database.
pub struct ReadTx<'a> {
    tx: &'a redb::ReadTransaction,
    md: &'a Metadata,
}

impl ReadTx<'_> {
    reads!();
}

/// A write transaction (see [`Metadata::write`]); reads see its own writes.
pub struct WriteTx<'a> {
    tx: &'a redb::WriteTransaction,
    md: &'a Metadata,
}

impl WriteTx<'_> {
    reads!();

    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> MetadataError {
        self.md.err(op)
    }

    fn put(&mut self, def: TableDefinition<&str, &[u8]>, k: &str, data: &[u8]) -> Result<()> {
        let mut t = self
            .tx
            .open_table(def)
            .map_err(self.err("opening a table"))?;
        t.insert(k, data).map_err(self.err("writing"))?;
        Ok(())
    }

    fn del(&mut self, def: TableDefinition<&str, &[u8]>, k: &str) -> Result<bool> {
        let mut t = self
            .tx
            .open_table(def)
            .map_err(self.err("opening a table"))?;
        let old = t.remove(k).map_err(self.err("removing"))?;
        Ok(old.is_some())
    }

    /// Creates or replaces an image (keeping `created` of the one replaced).
    pub fn put_image(&mut self, ns: &str, mut image: ImageRecord) -> Result<()> {
        validate_namespace(ns)?;
        validate_name("image name", &image.name)?;
        validate_labels(&image.labels)?;
        if let Some(old) = self.image(ns, &image.name)? {
            image.created = old.created;
        }
        self.put(IMAGES, &key(ns, &image.name), &encode(&image))
    }

    /// Removes an image; `NotFound` if absent.
    pub fn delete_image(&mut self, ns: &str, name: &str) -> Result<()> {
        validate_namespace(ns)?;
        if !self.del(IMAGES, &key(ns, name))? {
            return Err(MetadataError::NotFound {
                what: "image",
                namespace: ns.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Creates or replaces a snapshot record.
    pub fn put_snapshot(&mut self, ns: &str, snapshot: &SnapshotRecord) -> Result<()> {
        validate_namespace(ns)?;
        validate_name("snapshot key", &snapshot.key)?;
        validate_labels(&snapshot.labels)?;
        self.put(SNAPSHOTS, &key(ns, &snapshot.key), &encode(snapshot))
    }

    /// Removes a snapshot record; whether there was one.
    pub fn delete_snapshot(&mut self, ns: &str, key_: &str) -> Result<bool> {
        validate_namespace(ns)?;
        self.del(SNAPSHOTS, &key(ns, key_))
    }

    /// Sets the labels of a blob (creating its record), replacing those it had.
    pub fn set_content_labels(&mut self, ns: &str, digest: &Digest, labels: Labels) -> Result<()> {
        validate_namespace(ns)?;
        validate_labels(&labels)?;
        let now = Utc::now();
        let created = self.content(ns, digest)?.map(|c| c.created).unwrap_or(now);
        let rec = ContentRecord {
            digest: digest.clone(),
            labels,
            created,
            updated: now,
        };
        self.put(CONTENT, &key(ns, digest.as_str()), &encode(&rec))
    }

    /// Removes the record of a blob; whether there was one.
    pub fn delete_content(&mut self, ns: &str, digest: &Digest) -> Result<bool> {
        validate_namespace(ns)?;
        self.del(CONTENT, &key(ns, digest.as_str()))
    }

    /// Creates a lease; `AlreadyExists` if the id is taken.
    pub fn create_lease(&mut self, ns: &str, lease: &LeaseRecord) -> Result<()> {
        validate_namespace(ns)?;
        validate_name("lease id", &lease.id)?;
        validate_labels(&lease.labels)?;
        if self.lease(ns, &lease.id)?.is_some() {
            return Err(MetadataError::AlreadyExists {
                what: "lease",
                namespace: ns.to_owned(),
                name: lease.id.clone(),
            });
        }
        self.put(LEASES, &key(ns, &lease.id), &encode(lease))
    }

    /// Adds blobs and snapshot keys to a lease; `NotFound` if it is gone.
    pub fn add_lease_resources(
        &mut self,
        ns: &str,
        id: &str,
        content: impl IntoIterator<Item = Digest>,
        snapshots: impl IntoIterator<Item = String>,
    ) -> Result<()> {
        validate_namespace(ns)?;
        let mut lease = self.lease(ns, id)?.ok_or_else(|| MetadataError::NotFound {
            what: "lease",
            namespace: ns.to_owned(),
            name: id.to_owned(),
        })?;
        lease.content.extend(content);
        lease.snapshots.extend(snapshots);
        self.put(LEASES, &key(ns, id), &encode(&lease))
    }

    /// Removes a lease; whether there was one. What it kept goes at the next collection
    /// unless something else references it.
    pub fn delete_lease(&mut self, ns: &str, id: &str) -> Result<bool> {
        validate_namespace(ns)?;
        self.del(LEASES, &key(ns, id))
    }

    /// A new numeric id (for a snapshot directory), never handed out before.
    pub fn next_snapshot_id(&mut self) -> Result<u64> {
        let mut t = self
            .tx
            .open_table(COUNTERS)
            .map_err(self.err("opening counters"))?;
        let next = t
            .get(SNAPSHOT_ID)
            .map_err(self.err("reading the snapshot id"))?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        t.insert(SNAPSHOT_ID, next)
            .map_err(self.err("writing the snapshot id"))?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            target: Target {
                media_type: crate::pull::OCI_MANIFEST.into(),
                digest: Digest::of(name.as_bytes()),
                size: 1,
            },
            labels: Labels::new(),
            created: Utc::now(),
            updated: Utc::now(),
            manifest: None,
            platform: None,
        }
    }

    #[test]
    fn transactions_are_atomic_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            let md = Metadata::open(&path).unwrap();
            // a failing transaction leaves nothing, even what it wrote before failing
            let r: Result<()> = md.write(|tx| {
                tx.put_image("default", image("a"))?;
                tx.set_content_labels("default", &Digest::of(b"x"), Labels::new())?;
                tx.delete_image("default", "missing")
            });
            assert!(matches!(r, Err(MetadataError::NotFound { .. })));
            assert!(md.images("default").unwrap().is_empty());
            assert!(md.namespaces().unwrap().is_empty());
            md.write(|tx| {
                tx.put_image("default", image("a"))?;
                tx.put_image("k8s.io", image("b"))?;
                tx.next_snapshot_id()
            })
            .unwrap();
            let e = md
                .write(|tx| tx.put_image("default", image("bad\0name")))
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "invalid image name \"bad\\0name\": must not contain NUL"
            );
        }
        let md = Metadata::open(&path).unwrap();
        assert_eq!(md.image("default", "a").unwrap().unwrap().name, "a");
        assert!(md.image("default", "b").unwrap().is_none());
        assert_eq!(md.namespaces().unwrap(), ["default", "k8s.io"]);
        assert_eq!(md.write(|tx| tx.next_snapshot_id()).unwrap(), 2);
    }

    #[test]
    fn leases() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::open(dir.path().join("meta.db")).unwrap();
        let now = Utc::now();
        let lease = LeaseRecord {
            id: "l1".into(),
            labels: Labels::new(),
            created: now,
            expires: Some(now + chrono::Duration::seconds(60)),
            content: Default::default(),
            snapshots: Default::default(),
        };
        md.write(|tx| tx.create_lease("default", &lease)).unwrap();
        let e = md
            .write(|tx| tx.create_lease("default", &lease))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "lease \"l1\" already exists in namespace \"default\""
        );
        md.write(|tx| {
            tx.add_lease_resources(
                "default",
                "l1",
                [Digest::of(b"a"), Digest::of(b"a")],
                ["k".to_owned()],
            )
        })
        .unwrap();
        let got = md.read(|tx| tx.lease("default", "l1")).unwrap().unwrap();
        assert_eq!(got.content.len(), 1);
        assert_eq!(got.snapshots.len(), 1);
        assert!(!got.expired(now));
        assert!(got.expired(now + chrono::Duration::seconds(61)));
        assert_eq!(md.namespaces().unwrap(), ["default"]);
        let e = md
            .write(|tx| tx.add_lease_resources("default", "nope", [], []))
            .unwrap_err();
        assert!(matches!(e, MetadataError::NotFound { .. }), "{e}");
        assert!(md.write(|tx| tx.delete_lease("default", "l1")).unwrap());
        assert!(!md.write(|tx| tx.delete_lease("default", "l1")).unwrap());
        assert!(md.read(|tx| tx.leases("default")).unwrap().is_empty());
    }

    #[test]
    fn names() {
        validate_namespace("default").unwrap();
        validate_namespace("k8s.io").unwrap();
        for bad in ["", "-x", "a/b", "a\0b", &"a".repeat(77)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
        validate_name("image name", "docker.io/library/busybox:latest").unwrap();
        assert!(validate_name("snapshot key", "a\0b").is_err());
        assert!(validate_name("snapshot key", "").is_err());
        assert!(validate_name("snapshot key", &"a".repeat(4097)).is_err());
    }
}
