//! The overlayfs snapshotter, laid out as containerd's:
//!
//! ```text
//! <root>/snapshots/<id>/fs     the snapshot's files (an overlay upperdir while active)
//! <root>/snapshots/<id>/work   overlay workdir (active snapshots only)
//! ```
//!
//! Records (key → id, kind, parent, labels) live in the [`Metadata`] database, per namespace.
//! A snapshot is created, committed and removed in one write transaction each; the directory
//! work that goes with it happens inside that transaction (before its commit), so the
//! database never names a directory that is not there. A crash can at worst leave a
//! directory no record names: [`Snapshotter::open`] removes those.
//!
//! [`Snapshotter::prepare`] and [`Snapshotter::view`] return the [`Mount`]s that make the
//! snapshot's tree: a `bind` mount of `fs` without a parent (read-only for a view, or for a
//! view of a single parent: a read-only bind of that parent's `fs`), else an `overlay` with the
//! parents' `fs` dirs as `lowerdir` (nearest first) and, for an active snapshot, its own
//! `fs`/`work` as `upperdir`/`workdir`. The mount data holds absolute paths, so a chain is
//! limited by the page size (4096 bytes): about 100 layers with a short root; longer chains
//! fail with [`SnapshotError::MountOptionsTooLong`] (containerd mounts from a child process
//! that `chdir`s to the snapshots dir and uses relative paths; not done yet).
//!
//! Image layers are committed under their chain ID ([`chain_ids`]), so images sharing layers
//! share snapshots.

mod mount;

pub use mount::{mount_all, read_only_view, unmount, Mount, MountGuard};

use crate::content::Digest;
use crate::metadata::{Labels, Metadata, MetadataError, SnapshotKind, SnapshotRecord, WriteTx};
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{debug, info, warn};

/// Longest mount data the kernel takes (one page).
pub const MAX_MOUNT_DATA: usize = 4096;

/// Errors of the snapshotter, each naming the snapshot (namespace and key) it is about.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("snapshot {key:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, key: String },
    #[error("snapshot {key:?} already exists in namespace {namespace:?}")]
    AlreadyExists { namespace: String, key: String },
    #[error("parent {parent:?} of snapshot {key:?} is {kind}, not committed")]
    ParentNotCommitted {
        key: String,
        parent: String,
        kind: SnapshotKind,
    },
    #[error("cannot commit snapshot {key:?}: it is {kind}, not active")]
    NotActive { key: String, kind: SnapshotKind },
    #[error("cannot commit snapshot {key:?} onto a parent: it already has parent {parent:?}")]
    HasParent { key: String, parent: String },
    #[error("cannot remove snapshot {key:?}: it is the parent of {child:?}")]
    HasChildren { key: String, child: String },
    #[error(
        "mount options of snapshot {key:?} are {len} bytes, over the {MAX_MOUNT_DATA}-byte page"
    )]
    MountOptionsTooLong { key: String, len: usize },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { op, path, source }
}

/// What [`Snapshotter::stat`] and [`Snapshotter::list`] report.
pub type Info = SnapshotRecord;

/// Disk usage of a snapshot's own files (not its parents').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated (`st_blocks * 512`, hard links counted once).
    pub size: u64,
    pub inodes: u64,
}

/// The chain IDs of a stack of layers (bottom first), from their diff IDs:
/// `chain(L0) = diff(L0)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The overlayfs snapshotter. Cheap to clone; one per root and process (it shares the
/// [`Metadata`] handle, whose file is locked).
///
/// Every method blocks (filesystem work, a durable database commit of a few ms): from async
/// code, call them in `tokio::task::spawn_blocking`.
#[derive(Clone, Debug)]
pub struct Snapshotter {
    root: Arc<PathBuf>,
    md: Metadata,
    /// Keys (namespace, key) in use by this process and not to be collected (extractions).
    in_use: Arc<Mutex<HashMap<(String, String), usize>>>,
}

/// Marks a snapshot as in use until dropped (see [`Snapshotter::hold`]).
#[derive(Debug)]
pub struct Hold {
    snapshotter: Snapshotter,
    id: (String, String),
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut m = self.snapshotter.in_use.lock().unwrap();
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

impl Snapshotter {
    /// Opens the snapshotter at `root` (creating `root/snapshots`), with its records in `md`,
    /// and removes the directories no record names (left by a crash).
    pub fn open(root: impl Into<PathBuf>, md: Metadata) -> Result<Snapshotter> {
        let root: PathBuf = root.into();
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let s = Snapshotter {
            root: Arc::new(root),
            md,
            in_use: Arc::default(),
        };
        s.cleanup()?;
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn metadata(&self) -> &Metadata {
        &self.md
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The directory of snapshot number `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// The `fs` directory of snapshot `key` (an active snapshot's upperdir: where a layer
    /// is applied).
    pub fn fs_dir(&self, ns: &str, key: &str) -> Result<PathBuf> {
        Ok(self.dir(self.stat(ns, key)?.id).join("fs"))
    }

    /// Removes snapshot directories that no record names.
    fn cleanup(&self) -> Result<()> {
        let known: HashSet<u64> = self.md.read(|tx| -> Result<_> {
            let mut ids = HashSet::new();
            for ns in tx.namespaces()? {
                ids.extend(tx.snapshots(&ns)?.into_iter().map(|s| s.id));
            }
            Ok(ids)
        })?;
        let dir = self.snapshots_dir();
        for entry in std::fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| known.contains(&id));
            if !keep {
                let path = entry.path();
                info!(path = %path.display(), "removing orphaned snapshot directory");
                remove_tree(&path)?;
            }
        }
        Ok(())
    }

    /// Marks `key` as in use by this process: the garbage collector leaves it (and so its
    /// parents) alone until the returned guard is dropped.
    pub fn hold(&self, ns: &str, key: &str) -> Hold {
        let id = (ns.to_owned(), key.to_owned());
        *self.in_use.lock().unwrap().entry(id.clone()).or_default() += 1;
        Hold {
            snapshotter: self.clone(),
            id,
        }
    }

    pub(crate) fn is_held(&self, ns: &str, key: &str) -> bool {
        self.in_use
            .lock()
            .unwrap()
            .contains_key(&(ns.to_owned(), key.to_owned()))
    }

    /// A new writable snapshot `key` on top of the committed `parent` (or empty); returns its
    /// mounts.
    pub fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, SnapshotKind::Active)
    }

    /// As [`prepare`](Self::prepare), its record committed without a flush to disk
    /// ([`Metadata::write_unsynced`]): for a container create, whose container record is
    /// committed durably right after and makes this one durable too. A crash in between
    /// loses the record and leaves its directory, which the next snapshot given the same id
    /// (the id counter was not persisted either) removes before use.
    pub fn prepare_unsynced(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        self.create_with(ns, key, parent, labels, SnapshotKind::Active, false)
    }

    /// A new read-only snapshot `key` of the committed `parent` (or empty); returns its mounts.
    pub fn view(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, SnapshotKind::View)
    }

    fn create(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>> {
        self.create_with(ns, key, parent, labels, kind, true)
    }

    fn create_with(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        kind: SnapshotKind,
        durable: bool,
    ) -> Result<Vec<Mount>> {
        let body = |tx: &mut WriteTx<'_>| -> Result<_> {
            if tx.snapshot(ns, key)?.is_some() {
                return Err(SnapshotError::AlreadyExists {
                    namespace: ns.to_owned(),
                    key: key.to_owned(),
                });
            }
            if let Some(p) = parent {
                committed_parent(tx.snapshot(ns, p)?, ns, key, p)?;
            }
            let id = tx.next_snapshot_id()?;
            let now = Utc::now();
            let rec = SnapshotRecord {
                key: key.to_owned(),
                id,
                kind,
                parent: parent.map(str::to_owned),
                labels,
                created: now,
                updated: now,
                size: None,
                inodes: None,
            };
            tx.put_snapshot(ns, &rec)?;
            // refuse a chain too long to mount before anything is made
            let parents = parent_ids(ns, &rec, |k| tx.snapshot(ns, k))?;
            let mounts = self.build_mounts(&rec, &parents)?;
            // the directories, before the record is committed
            let dir = self.dir(id);
            if dir.symlink_metadata().is_ok() {
                // left by a crash after an earlier, uncommitted transaction took this id
                remove_tree(&dir)?;
            }
            std::fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
            let made = (|| {
                let fs = dir.join("fs");
                std::fs::create_dir(&fs).map_err(io_err("creating", &fs))?;
                std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .map_err(io_err("chmod", &fs))?;
                if kind == SnapshotKind::Active {
                    let work = dir.join("work");
                    std::fs::create_dir(&work).map_err(io_err("creating", &work))?;
                }
                Ok(())
            })();
            if let Err(e) = made {
                let _ = remove_tree(&dir);
                return Err(e);
            }
            Ok((rec, mounts))
        };
        let rec = if durable {
            self.md.write(body)
        } else {
            self.md.write_unsynced(body)
        }?;
        debug!(ns, key, id = rec.0.id, ?parent, %kind, "created snapshot");
        Ok(rec.1)
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        let rec = self.stat(ns, key)?;
        self.mounts_of(ns, &rec)
    }

    fn mounts_of(&self, ns: &str, rec: &SnapshotRecord) -> Result<Vec<Mount>> {
        let parents = self
            .md
            .read(|tx| parent_ids(ns, rec, |k| tx.snapshot(ns, k)))?;
        self.build_mounts(rec, &parents)
    }

    fn build_mounts(&self, rec: &SnapshotRecord, parents: &[u64]) -> Result<Vec<Mount>> {
        let fs = |id: u64| self.dir(id).join("fs").display().to_string();
        let own = fs(rec.id);
        let active = rec.kind == SnapshotKind::Active;
        let bind = |source: String, ro: bool| Mount {
            kind: "bind".into(),
            source,
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let mounts = match (parents.len(), active) {
            (0, _) => vec![bind(own, !active)],
            (1, false) => vec![bind(fs(parents[0]), true)],
            _ => {
                let lower = parents.iter().map(|&id| fs(id)).collect::<Vec<_>>();
                let mut options = Vec::new();
                if active {
                    options.push(format!(
                        "workdir={}",
                        self.dir(rec.id).join("work").display()
                    ));
                    options.push(format!("upperdir={own}"));
                } else {
                    options.push("ro".into());
                }
                options.push(format!("lowerdir={}", lower.join(":")));
                let len = options.iter().map(|o| o.len() + 1).sum::<usize>();
                if len >= MAX_MOUNT_DATA {
                    return Err(SnapshotError::MountOptionsTooLong {
                        key: rec.key.clone(),
                        len,
                    });
                }
                vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }]
            }
        };
        Ok(mounts)
    }

    /// Commits the active snapshot `key` as the committed snapshot `name` (same directory;
    /// `key` is gone afterwards). Its disk usage is measured and recorded.
    /// [`SnapshotError::AlreadyExists`] if `name` exists (e.g. another unpack committed the
    /// same chain ID first); `key` is then left as it was.
    pub fn commit(&self, ns: &str, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.commit_inner(ns, name, key, None, labels)
    }

    /// Commits the active snapshot `key`, prepared without a parent, as `name` on top of the
    /// committed `parent` (containerd's "rebase" on commit). For a layer applied in overlay
    /// mode, whose upper dir holds only its diff (whiteouts as 0/0 devices), whatever lies
    /// below: this lets layers be extracted in parallel and stacked afterwards.
    pub fn commit_on(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<()> {
        self.commit_inner(ns, name, key, Some(parent), labels)
    }

    fn commit_inner(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        rebase: Option<Option<&str>>,
        labels: Labels,
    ) -> Result<()> {
        let rec = self.stat(ns, key)?;
        if rec.kind != SnapshotKind::Active {
            return Err(SnapshotError::NotActive {
                key: key.to_owned(),
                kind: rec.kind,
            });
        }
        let usage = self.measure(rec.id)?;
        self.md.write(|tx| -> Result<_> {
            let cur = get(tx.snapshot(ns, key)?, ns, key)?;
            if cur.kind != SnapshotKind::Active {
                return Err(SnapshotError::NotActive {
                    key: key.to_owned(),
                    kind: cur.kind,
                });
            }
            if tx.snapshot(ns, name)?.is_some() {
                return Err(SnapshotError::AlreadyExists {
                    namespace: ns.to_owned(),
                    key: name.to_owned(),
                });
            }
            let mut parent = cur.parent.clone();
            if let Some(new_parent) = rebase {
                if let Some(p) = &cur.parent {
                    return Err(SnapshotError::HasParent {
                        key: key.to_owned(),
                        parent: p.clone(),
                    });
                }
                if let Some(p) = new_parent {
                    committed_parent(tx.snapshot(ns, p)?, ns, name, p)?;
                }
                parent = new_parent.map(str::to_owned);
            }
            let mut all = cur.labels.clone();
            all.extend(labels);
            let committed = SnapshotRecord {
                parent,
                key: name.to_owned(),
                kind: SnapshotKind::Committed,
                labels: all,
                updated: Utc::now(),
                size: Some(usage.size),
                inodes: Some(usage.inodes),
                ..cur
            };
            tx.delete_snapshot(ns, key)?;
            tx.put_snapshot(ns, &committed)?;
            Ok(())
        })?;
        debug!(ns, key, name, id = rec.id, "committed snapshot");
        // the work dir is only needed while active
        let work = self.dir(rec.id).join("work");
        if let Err(e) = std::fs::remove_dir_all(&work) {
            warn!(path = %work.display(), error = %e, "could not remove a committed snapshot's work dir");
        }
        Ok(())
    }

    /// Removes snapshot `key` and its files; refused while it is the parent of another.
    pub fn remove(&self, ns: &str, key: &str) -> Result<()> {
        let id = self.md.write(|tx| remove_record(tx, ns, key))?;
        self.remove_dir(id)
    }

    /// As `remove`, but the files go in the background (`crate::trash`): the key is free, and
    /// the directory renamed out of the way, when this returns. For a container's snapshot,
    /// whose bundle went to the trash first (so its overlay is unmounted first).
    pub fn remove_deferred(&self, ns: &str, key: &str) -> Result<()> {
        let id = self.md.write(|tx| remove_record(tx, ns, key))?;
        self.discard_dir(id)
    }

    /// As `remove_deferred` of `key` (if given and still there), with `also` in the same
    /// metadata transaction: a container's record and its snapshot's go in one commit (one
    /// fsync), or neither does.
    pub fn remove_deferred_with<T>(
        &self,
        ns: &str,
        key: Option<&str>,
        also: impl FnOnce(&mut WriteTx<'_>) -> std::result::Result<T, MetadataError>,
    ) -> Result<T> {
        let (id, out) = self.md.write(|tx| {
            let id = match key.map(|k| remove_record(tx, ns, k)) {
                Some(Ok(id)) => Some(id),
                None | Some(Err(SnapshotError::NotFound { .. })) => None,
                Some(Err(e)) => return Err(e),
            };
            Ok((id, also(tx)?))
        })?;
        if let Some(id) = id {
            self.discard_dir(id)?;
        }
        Ok(out)
    }

    /// Renames a removed snapshot's directory out of the way and hands it to the trash.
    fn discard_dir(&self, id: u64) -> Result<()> {
        let dir = self.dir(id);
        let gone = self.snapshots_dir().join(format!("rm-{id}"));
        match std::fs::rename(&dir, &gone) {
            Ok(()) => crate::trash::discard(gone),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("renaming", &dir)(e)),
        }
        debug!(id, "snapshot directory handed to the trash");
        Ok(())
    }

    pub(crate) fn remove_dir(&self, id: u64) -> Result<()> {
        let dir = self.dir(id);
        // rename first so that a crash mid-way leaves no half tree under a live id
        let gone = self.snapshots_dir().join(format!("rm-{id}"));
        match std::fs::rename(&dir, &gone) {
            Ok(()) => remove_tree(&gone),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("renaming", &dir)(e)),
        }?;
        debug!(id, "removed snapshot directory");
        Ok(())
    }

    /// One snapshot's record.
    pub fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        get(self.md.read(|tx| tx.snapshot(ns, key))?, ns, key)
    }

    /// Every snapshot of a namespace, sorted by key.
    pub fn list(&self, ns: &str) -> Result<Vec<Info>> {
        Ok(self.md.read(|tx| tx.snapshots(ns))?)
    }

    /// Disk usage of the snapshot's own layer: recorded at commit, measured now otherwise.
    pub fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        let rec = self.stat(ns, key)?;
        match (rec.size, rec.inodes) {
            (Some(size), Some(inodes)) => Ok(Usage { size, inodes }),
            _ => self.measure(rec.id),
        }
    }

    fn measure(&self, id: u64) -> Result<Usage> {
        let fs = self.dir(id).join("fs");
        let mut usage = Usage::default();
        let mut seen = HashSet::new();
        let mut stack = vec![fs];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let entry = entry.map_err(io_err("listing", &dir))?;
                let path = entry.path();
                let meta = entry.metadata().map_err(io_err("stat", &path))?;
                if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                usage.inodes += 1;
                usage.size += meta.blocks() * 512;
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
        Ok(usage)
    }
}

/// The ids of the parents of `rec`, nearest first.
fn parent_ids(
    ns: &str,
    rec: &SnapshotRecord,
    mut lookup: impl FnMut(&str) -> Result<Option<SnapshotRecord>, MetadataError>,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut next = rec.parent.clone();
    while let Some(p) = next {
        let prec = get(lookup(&p)?, ns, &p)?;
        ids.push(prec.id);
        next = prec.parent;
    }
    Ok(ids)
}

/// Checks that `parent` exists and is committed: only then may snapshot `key` stack on it.
fn committed_parent(rec: Option<SnapshotRecord>, ns: &str, key: &str, parent: &str) -> Result<()> {
    let prec = get(rec, ns, parent)?;
    if prec.kind != SnapshotKind::Committed {
        return Err(SnapshotError::ParentNotCommitted {
            key: key.to_owned(),
            parent: parent.to_owned(),
            kind: prec.kind,
        });
    }
    Ok(())
}

fn get(rec: Option<SnapshotRecord>, ns: &str, key: &str) -> Result<SnapshotRecord> {
    rec.ok_or_else(|| SnapshotError::NotFound {
        namespace: ns.to_owned(),
        key: key.to_owned(),
    })
}

fn remove_record(tx: &mut WriteTx<'_>, ns: &str, key: &str) -> Result<u64> {
    let rec = get(tx.snapshot(ns, key)?, ns, key)?;
    if let Some(child) = tx
        .snapshots(ns)?
        .into_iter()
        .find(|s| s.parent.as_deref() == Some(key))
    {
        return Err(SnapshotError::HasChildren {
            key: key.to_owned(),
            child: child.key,
        });
    }
    tx.delete_snapshot(ns, key)?;
    Ok(rec.id)
}

/// Removes a tree without following symlinks (layers hold anything).
fn remove_tree(path: &Path) -> Result<()> {
    crate::unpack::remove_dir_all(path).map_err(io_err("removing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_known_values() {
        // busybox-like: values computed with `printf '%s %s' a b | sha256sum`
        let d = |s: &str| Digest::parse(s).unwrap();
        let l0 = d("sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4");
        let l1 = d("sha256:2f1e7a71c7ad5fa4b5a8b7dbf4f4b2f6c0d7b4e1a0b6c0c5a1c6e7e7f0b1a2c3");
        let ids = chain_ids(&[l0.clone(), l1.clone()]);
        assert_eq!(ids[0], l0);
        assert_eq!(
            ids[1],
            Digest::of(format!("{} {}", l0.as_str(), l1.as_str()).as_bytes())
        );
        assert_eq!(ids[1].as_str(), KNOWN_CHAIN_1);
        assert!(chain_ids(&[]).is_empty());
    }

    const KNOWN_CHAIN_1: &str =
        "sha256:bbee492cd9442fdc12885741886adf5e88e234864b80f958e1ec9da316941802";
}
