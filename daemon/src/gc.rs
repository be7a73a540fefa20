//! Garbage collection: mark and sweep over the metadata, as containerd's (simplified).
//!
//! Roots, in every namespace: images (their target digest), blobs and snapshots labelled
//! [`LABEL_GC_ROOT`], active snapshots and views (containers' root filesystems; leases and
//! containers will be roots of their own later), and snapshots this process holds
//! ([`Snapshotter::hold`], e.g. layers being extracted). An extraction snapshot (labelled
//! [`LABEL_SNAPSHOT_REF`]) that is not held was left by a crashed unpack and is collected.
//!
//! Marking follows the labels of content records: `containerd.io/gc.ref.content.*` names
//! blobs (manifest → config and layers, index → manifests), `containerd.io/gc.ref.snapshot.*`
//! names snapshots (config → top chain ID); a snapshot marks its parent. Sweeping removes,
//! in one transaction, every unmarked content and snapshot record, then the unmarked
//! snapshots' directories and every blob in the store no namespace reaches.
//!
//! [`collect`] takes the collector's lock ([`Metadata::gc_lock`]): it waits for every
//! [`crate::metadata::Lease`] (pulls and unpacks in progress) and keeps new ones waiting.

use crate::content::{ContentError, ContentStore, Digest};
use crate::image::LABEL_SNAPSHOT_REF;
use crate::metadata::{
    Metadata, MetadataError, SnapshotKind, LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT,
    LABEL_GC_ROOT,
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
                Ok(()) | Err(ContentError::NotFound(_)) => stats.blobs.push(info.digest),
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

/// Marks, removes unmarked records (one transaction) and snapshot dirs; returns the blobs
/// that are still referenced.
fn sweep_metadata(md: &Metadata, s: &Snapshotter) -> Result<(HashSet<Digest>, GcStats), GcError> {
    let mut stats = GcStats::default();
    let mut live_blobs = HashSet::new();
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

            // roots
            let mut blob_queue: Vec<Digest> =
                tx.images(ns)?.into_iter().map(|i| i.target.digest).collect();
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

            // mark
            let mut blobs = HashSet::new();
            while let Some(d) = blob_queue.pop() {
                if !blobs.insert(d.clone()) {
                    continue;
                }
                let Some(rec) = contents.get(&d) else { continue };
                for (k, v) in &rec.labels {
                    if k.starts_with(LABEL_GC_REF_CONTENT) {
                        match Digest::parse(v) {
                            Ok(d) => blob_queue.push(d),
                            Err(e) => warn!(ns, digest = %rec.digest, label = %k, error = %e, "ignoring bad gc label"),
                        }
                    } else if k.starts_with(LABEL_GC_REF_SNAPSHOT) {
                        snap_queue.push(v.clone());
                    }
                }
            }
            let mut snaps = HashSet::new();
            while let Some(k) = snap_queue.pop() {
                if !snaps.insert(k.clone()) {
                    continue;
                }
                if let Some(p) = snapshots.get(&k).and_then(|r| r.parent.clone()) {
                    snap_queue.push(p);
                }
            }

            // sweep the records (unmarked snapshots have no marked children: a marked
            // snapshot marks its parent)
            for d in contents.keys().filter(|d| !blobs.contains(*d)) {
                tx.delete_content(ns, d)?;
                stats.content_records += 1;
                debug!(ns, digest = %d, "removed content record");
            }
            for r in snapshots.values().filter(|r| !snaps.contains(&r.key)) {
                tx.delete_snapshot(ns, &r.key)?;
                ids.push(r.id);
                stats.snapshots.push((ns.to_owned(), r.key.clone()));
                debug!(ns, key = %r.key, "removed snapshot record");
            }
            live_blobs.extend(blobs);
        }
        Ok(ids)
    })?;
    for id in removed_ids {
        s.remove_dir(id)?;
    }
    stats.snapshots.sort();
    Ok((live_blobs, stats))
}
