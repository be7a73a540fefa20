//! Garbage collection: mark and sweep over the metadata, as containerd's (simplified).
//!
//! Roots, in every namespace: images (their target digest), blobs and snapshots labelled
//! [`LABEL_GC_ROOT`], the blobs and snapshots of leases that have not expired (expired ones
//! are deleted), active snapshots and views (mounts, containers' root filesystems;
//! containers become roots of their own in `other_roots`), and snapshots this process holds
//! ([`Snapshotter::hold`], e.g. layers being extracted). An extraction snapshot (labelled
//! [`LABEL_SNAPSHOT_REF`]) that is not held was left by a crashed unpack and is collected.
//!
//! Marking follows the labels of content records: `containerd.io/gc.ref.content.*` names
//! blobs (manifest → config and layers, index → manifests), `containerd.io/gc.ref.snapshot.*`
//! names snapshots (config → top chain ID); a snapshot marks its parent. Sweeping removes,
//! in one transaction, every unmarked content and snapshot record, then the unmarked
//! snapshots' directories and every blob in the store no namespace reaches.
//!
//! [`collect`] also takes the collector's in-process lock ([`Metadata::gc_lock`]): it waits
//! for every [`crate::metadata::Lease`] guard (pulls and unpacks in progress, between a blob's
//! commit and its entry in their lease record) and keeps new ones waiting.

use crate::content::{ContentError, ContentStore, Digest};
use crate::image::LABEL_SNAPSHOT_REF;
use crate::metadata::{
    ContentRecord, Metadata, MetadataError, SnapshotKind, SnapshotRecord, WriteTx,
    LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT, LABEL_GC_ROOT,
};
use crate::snapshot::{SnapshotError, Snapshotter};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Errors of a collection.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("garbage collection: {0}")]
    Metadata(#[from] MetadataError),
    #[error("garbage collection: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("garbage collection: {0}")]
    Content(#[from] ContentError),
    #[error("garbage collection task failed: {0}")]
    Task(String),
}

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs deleted from the content store.
    pub blobs: Vec<Digest>,
    /// Snapshots removed, as (namespace, key).
    pub snapshots: Vec<(String, String)>,
    /// Content records removed (a blob may have one per namespace).
    pub content_records: usize,
    /// Expired leases removed.
    pub leases: usize,
    /// Bytes of the blobs deleted.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Runs one collection over every namespace; see the module docs.
pub async fn collect(store: &ContentStore, snapshotter: &Snapshotter) -> Result<GcStats, GcError> {
    let md = snapshotter.metadata().clone();
    let _lock = md.gc_lock().await;
    let started = Instant::now();
    let s = snapshotter.clone();
    let (live, mut stats) = tokio::task::spawn_blocking(move || sweep_metadata(&md, &s))
        .await
        .map_err(|e| GcError::Task(e.to_string()))??;
    for info in store.list().await? {
        if !live.contains(&info.digest) {
            match store.delete(&info.digest).await {
                Ok(()) | Err(ContentError::NotFound(_)) => {
                    stats.bytes += info.size;
                    stats.blobs.push(info.digest)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    stats.elapsed = started.elapsed();
    info!(
        blobs = stats.blobs.len(),
        snapshots = stats.snapshots.len(),
        content_records = stats.content_records,
        elapsed = ?stats.elapsed,
        "garbage collected"
    );
    Ok(stats)
}

/// What one namespace's roots reach: blobs and snapshot keys.
#[derive(Debug, Default)]
struct Marked {
    blobs: HashSet<Digest>,
    snapshots: HashSet<String>,
}

/// Follows `gc.ref.*` labels from `blobs` and parents from `snaps` (see the module docs).
fn mark(
    ns: &str,
    contents: &HashMap<Digest, ContentRecord>,
    snapshots: &HashMap<String, SnapshotRecord>,
    mut blob_queue: Vec<Digest>,
    mut snap_queue: Vec<String>,
) -> Marked {
    let mut m = Marked::default();
    while let Some(d) = blob_queue.pop() {
        if !m.blobs.insert(d.clone()) {
            continue;
        }
        let Some(rec) = contents.get(&d) else {
            continue;
        };
        for (k, v) in &rec.labels {
            if k.starts_with(LABEL_GC_REF_CONTENT) {
                match Digest::parse(v) {
                    Ok(d) => blob_queue.push(d),
                    Err(e) => {
                        warn!(ns, digest = %rec.digest, label = %k, error = %e, "ignoring bad gc label")
                    }
                }
            } else if k.starts_with(LABEL_GC_REF_SNAPSHOT) {
                snap_queue.push(v.clone());
            }
        }
    }
    while let Some(k) = snap_queue.pop() {
        if !m.snapshots.insert(k.clone()) {
            continue;
        }
        if let Some(p) = snapshots.get(&k).and_then(|r| r.parent.clone()) {
            snap_queue.push(p);
        }
    }
    m
}

/// Roots besides images and leases: every container's rootfs snapshot (its parents, the
/// image's layers, follow), so a container keeps running whatever happens to its image.
/// Active snapshots are roots anyway (above); naming containers' keeps them whatever kind
/// their snapshot has (e.g. a view), as containerd's container -> snapshot reference does.
fn other_roots(tx: &WriteTx<'_>, ns: &str) -> Result<(Vec<Digest>, Vec<String>), GcError> {
    let snapshots = tx
        .containers(ns)?
        .into_iter()
        .filter_map(|c| c.snapshot_key)
        .collect();
    Ok((Vec::new(), snapshots))
}

/// The blobs that images reach, in any namespace, each with one image (namespace, name)
/// that reaches it: what `content rm` must not delete while the image is there.
pub fn image_content(md: &Metadata) -> Result<HashMap<Digest, (String, String)>, GcError> {
    md.read(|tx| -> Result<_, GcError> {
        let mut out = HashMap::new();
        for ns in tx.namespaces()? {
            let contents: HashMap<Digest, _> = tx
                .contents(&ns)?
                .into_iter()
                .map(|c| (c.digest.clone(), c))
                .collect();
            for image in tx.images(&ns)? {
                let m = mark(
                    &ns,
                    &contents,
                    &HashMap::new(),
                    vec![image.target.digest.clone()],
                    Vec::new(),
                );
                for d in m.blobs {
                    out.entry(d)
                        .or_insert_with(|| (ns.clone(), image.name.clone()));
                }
            }
        }
        Ok(out)
    })
}

/// The snapshots that the images of namespace `ns` use (their layer chains), each with one
/// image name: what `snapshots rm` must refuse.
pub fn image_snapshots(md: &Metadata, ns: &str) -> Result<HashMap<String, String>, GcError> {
    md.read(|tx| -> Result<_, GcError> {
        let contents: HashMap<Digest, _> = tx
            .contents(ns)?
            .into_iter()
            .map(|c| (c.digest.clone(), c))
            .collect();
        let snapshots: HashMap<String, _> = tx
            .snapshots(ns)?
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
        let mut out = HashMap::new();
        for image in tx.images(ns)? {
            let m = mark(
                ns,
                &contents,
                &snapshots,
                vec![image.target.digest.clone()],
                Vec::new(),
            );
            for k in m.snapshots {
                out.entry(k).or_insert_with(|| image.name.clone());
            }
        }
        Ok(out)
    })
}

/// Marks, removes unmarked records (one transaction) and snapshot dirs; returns the blobs
/// that are still referenced.
fn sweep_metadata(md: &Metadata, s: &Snapshotter) -> Result<(HashSet<Digest>, GcStats), GcError> {
    let mut stats = GcStats::default();
    let mut live_blobs = HashSet::new();
    let now = chrono::Utc::now();
    let removed_ids = md.write(|tx| -> Result<Vec<u64>, GcError> {
        let mut ids = Vec::new();
        for ns in tx.namespaces()? {
            let ns = ns.as_str();
            let contents: HashMap<Digest, _> = tx
                .contents(ns)?
                .into_iter()
                .map(|c| (c.digest.clone(), c))
                .collect();
            let snapshots: HashMap<String, _> = tx
                .snapshots(ns)?
                .into_iter()
                .map(|r| (r.key.clone(), r))
                .collect();

            // roots: images, gc.root labels, live leases, active snapshots and views, held
            // snapshots, and what later record kinds keep
            let mut blob_queue: Vec<Digest> = tx
                .images(ns)?
                .into_iter()
                .map(|i| i.target.digest)
                .collect();
            blob_queue.extend(
                contents
                    .values()
                    .filter(|c| c.labels.contains_key(LABEL_GC_ROOT))
                    .map(|c| c.digest.clone()),
            );
            let mut snap_queue: Vec<String> = snapshots
                .values()
                .filter(|r| {
                    // an extraction's snapshot not held by this process (the only one with
                    // the database open) was left by a crash
                    let leftover_extraction = r.labels.contains_key(LABEL_SNAPSHOT_REF);
                    (r.kind != SnapshotKind::Committed && !leftover_extraction)
                        || r.labels.contains_key(LABEL_GC_ROOT)
                        || s.is_held(ns, &r.key)
                })
                .map(|r| r.key.clone())
                .collect();
            for lease in tx.leases(ns)? {
                if lease.expired(now) {
                    tx.delete_lease(ns, &lease.id)?;
                    stats.leases += 1;
                    debug!(ns, lease = %lease.id, "removed expired lease");
                    continue;
                }
                blob_queue.extend(lease.content);
                snap_queue.extend(lease.snapshots);
            }
            let (blobs, snaps) = other_roots(tx, ns)?;
            blob_queue.extend(blobs);
            snap_queue.extend(snaps);

            let marked = mark(ns, &contents, &snapshots, blob_queue, snap_queue);

            // sweep the records (unmarked snapshots have no marked children: a marked
            // snapshot marks its parent)
            for d in contents.keys().filter(|d| !marked.blobs.contains(*d)) {
                tx.delete_content(ns, d)?;
                stats.content_records += 1;
                debug!(ns, digest = %d, "removed content record");
            }
            for r in snapshots
                .values()
                .filter(|r| !marked.snapshots.contains(&r.key))
            {
                tx.delete_snapshot(ns, &r.key)?;
                ids.push(r.id);
                stats.snapshots.push((ns.to_owned(), r.key.clone()));
                debug!(ns, key = %r.key, "removed snapshot record");
            }
            live_blobs.extend(marked.blobs);
        }
        Ok(ids)
    })?;
    for id in removed_ids {
        s.remove_dir(id)?;
    }
    stats.snapshots.sort();
    Ok((live_blobs, stats))
}
