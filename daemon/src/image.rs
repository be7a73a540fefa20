//! Unpacking a pulled image into snapshots, and recording it in the metadata.
//!
//! [`unpack_image`] applies the layers bottom first, each into a temporary active snapshot
//! (`extract-<random>-<chain ID>`) on top of the previous layer's committed snapshot, checks
//! the diff ID against the config's `rootfs.diff_ids` and commits it under the layer's chain
//! ID. A layer whose chain ID is already committed is skipped, so images sharing a base
//! share its snapshots. If another unpack commits the same chain ID first, ours is removed
//! and theirs is used.
//!
//! [`record_image`] then creates the image record (name → manifest or index) together with
//! the content labels the garbage collector follows (`containerd.io/gc.ref.content.*`,
//! `containerd.io/gc.ref.snapshot.overlayfs`), all in one transaction and only once every
//! blob is in the store and the top snapshot is committed: a half-pulled or half-unpacked
//! image is never visible, whenever the process dies.
//!
//! Hold a [`crate::metadata::Lease`] from the pull until the image is recorded, so that the
//! collector does not take the blobs and snapshots nothing references yet.
//!
//! Layers are extracted in parallel (up to [`default_parallelism`], each in a blocking task
//! that decompresses, hashes and writes), each into a snapshot without a parent, and
//! committed bottom first onto the layer below ([`Snapshotter::commit_on`]).

use crate::content::{ContentError, ContentStore, Digest, InvalidDigest};
use crate::metadata::{
    ImageRecord, Labels, Metadata, MetadataError, SnapshotKind, Target, LABEL_GC_REF_CONTENT,
    LABEL_GC_REF_SNAPSHOT,
};
use crate::pull::PulledImage;
use crate::snapshot::{chain_ids, Hold, SnapshotError, Snapshotter};
use crate::unpack::{apply_layer, Compression, UnpackError, UnpackMode, UnpackOptions};
use chrono::Utc;
use futures_util::StreamExt;
use serde::Deserialize;
use std::time::Instant;
use tracing::{debug, info};

/// Label on an extraction snapshot naming the chain ID it is committed as (containerd's).
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// The snapshotter name in `containerd.io/gc.ref.snapshot.<name>`.
pub const SNAPSHOTTER_NAME: &str = "overlayfs";

/// Errors of unpacking and recording an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("invalid digest in image: {0}")]
    InvalidDigest(#[from] InvalidDigest),
    #[error("invalid image config {digest}: {reason}")]
    InvalidConfig { digest: Digest, reason: String },
    #[error("image config {config} lists {diff_ids} diff IDs for {layers} layers")]
    LayerCount {
        config: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("unpacking layer {index} ({layer}): {source}")]
    Unpack {
        index: usize,
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {index} ({layer}) has diff ID {actual}, the image config says {expected}")]
    DiffIdMismatch {
        index: usize,
        layer: Digest,
        expected: Digest,
        actual: String,
    },
    #[error("snapshot {0} of the image is not committed")]
    SnapshotMissing(Digest),
    #[error("unpack task for layer {index} failed: {message}")]
    Task { index: usize, message: String },
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// A layer to unpack: its blob and how it is compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub media_type: String,
}

/// What [`unpack_image`] needs: the config (for `rootfs.diff_ids`) and the layers, bottom
/// first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayers {
    pub config: Digest,
    pub layers: Vec<Layer>,
}

impl TryFrom<&PulledImage> for ImageLayers {
    type Error = ImageError;
    fn try_from(p: &PulledImage) -> Result<ImageLayers> {
        Ok(ImageLayers {
            config: p.config_digest.clone(),
            layers: p
                .layers
                .iter()
                .map(|l| {
                    Ok(Layer {
                        digest: Digest::parse(&l.digest)?,
                        media_type: l.media_type.clone(),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// The outcome of [`unpack_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub diff_ids: Vec<Digest>,
    /// Chain IDs, bottom first: the keys of the committed snapshots.
    pub chain_ids: Vec<Digest>,
    /// Layers applied by this call (the others were already there).
    pub applied: usize,
}

impl Unpacked {
    /// The key of the image's top snapshot (`None` for an image without layers).
    pub fn top(&self) -> Option<&Digest> {
        self.chain_ids.last()
    }
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The `rootfs.diff_ids` of an image config in the store.
pub async fn diff_ids(store: &ContentStore, config: &Digest) -> Result<Vec<Digest>> {
    let data = store.read_all(config).await?;
    let parsed: ConfigRootfs =
        serde_json::from_slice(&data).map_err(|e| ImageError::InvalidConfig {
            digest: config.clone(),
            reason: e.to_string(),
        })?;
    parsed
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            Digest::parse(d).map_err(|e| ImageError::InvalidConfig {
                digest: config.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// How many layers [`unpack_image`] extracts at once: the CPUs, at most 4.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1)
}

/// Unpacks the layers of `image` (blobs in `store`) into committed snapshots of namespace
/// `ns`, keyed by chain ID; see the module docs. Extracts up to [`default_parallelism`]
/// layers at once.
pub async fn unpack_image(
    ns: &str,
    image: &ImageLayers,
    store: &ContentStore,
    snapshotter: &Snapshotter,
) -> Result<Unpacked> {
    unpack_image_with(ns, image, store, snapshotter, default_parallelism()).await
}

/// [`unpack_image`] extracting up to `parallel` layers at once (at least 1).
///
/// Each missing layer is extracted into its own snapshot prepared without a parent (a layer
/// applied in overlay mode does not depend on what lies below it) and checked against its
/// diff ID; the snapshots are then committed bottom first, each onto the previous chain ID
/// ([`Snapshotter::commit_on`]), as soon as it and the ones below are done.
pub async fn unpack_image_with(
    ns: &str,
    image: &ImageLayers,
    store: &ContentStore,
    snapshotter: &Snapshotter,
    parallel: usize,
) -> Result<Unpacked> {
    let started = Instant::now();
    let diff_ids = diff_ids(store, &image.config).await?;
    if diff_ids.len() != image.layers.len() {
        return Err(ImageError::LayerCount {
            config: image.config.clone(),
            diff_ids: diff_ids.len(),
            layers: image.layers.len(),
        });
    }
    let chains = chain_ids(&diff_ids);
    let mut jobs = Vec::new();
    for (index, layer) in image.layers.iter().enumerate() {
        if is_committed(snapshotter, ns, &chains[index])? {
            debug!(ns, chain = %chains[index], "layer already unpacked");
            continue;
        }
        if !store.exists(&layer.digest).await? {
            return Err(ContentError::NotFound(layer.digest.clone()).into());
        }
        jobs.push(LayerJob {
            ns: ns.to_owned(),
            index,
            layer: layer.clone(),
            blob: store.blob_path(&layer.digest),
            diff_id: diff_ids[index].clone(),
            chain: chains[index].clone(),
        });
    }
    let mut extracted = futures_util::stream::iter(jobs.into_iter().map(|job| {
        let s = snapshotter.clone();
        let index = job.index;
        async move {
            tokio::task::spawn_blocking(move || job.extract(&s))
                .await
                .map_err(|e| ImageError::Task {
                    index,
                    message: e.to_string(),
                })?
        }
    }))
    .buffered(parallel.max(1));

    let mut applied = 0;
    let mut failed: Option<ImageError> = None;
    while let Some(done) = extracted.next().await {
        let done = match (done, &failed) {
            (Ok(done), None) => done,
            (Ok(done), Some(_)) => {
                // a layer below failed: discard this one
                let s = snapshotter.clone();
                let _ = tokio::task::spawn_blocking(move || s.remove(&done.ns, &done.key)).await;
                continue;
            }
            (Err(e), None) => {
                failed = Some(e);
                continue;
            }
            (Err(_), Some(_)) => continue,
        };
        let s = snapshotter.clone();
        let parent = done.index.checked_sub(1).map(|i| chains[i].clone());
        let chain = chains[done.index].clone();
        let r = tokio::task::spawn_blocking(move || done.commit(&s, &chain, parent.as_ref()))
            .await
            .map_err(|e| ImageError::Task {
                index: 0,
                message: e.to_string(),
            })
            .and_then(|r| r);
        match r {
            Ok(did) => applied += usize::from(did),
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    info!(
        ns,
        config = %image.config,
        layers = image.layers.len(),
        applied,
        parallel,
        elapsed = ?started.elapsed(),
        "unpacked image"
    );
    Ok(Unpacked {
        diff_ids,
        chain_ids: chains,
        applied,
    })
}

fn is_committed(s: &Snapshotter, ns: &str, chain: &Digest) -> Result<bool> {
    match s.stat(ns, chain.as_str()) {
        Ok(rec) => Ok(rec.kind == SnapshotKind::Committed),
        Err(SnapshotError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

struct LayerJob {
    ns: String,
    index: usize,
    layer: Layer,
    blob: std::path::PathBuf,
    diff_id: Digest,
    chain: Digest,
}

/// A layer extracted into the active snapshot `key`, not committed yet.
struct Extracted {
    ns: String,
    index: usize,
    key: String,
    _hold: Hold,
}

impl LayerJob {
    /// Extracts the layer into a new parentless snapshot and checks its diff ID; on error the
    /// snapshot is removed.
    fn extract(self, s: &Snapshotter) -> Result<Extracted> {
        let ns = self.ns.as_str();
        let key = format!("extract-{:016x}-{}", fastrand::u64(..), self.chain);
        let hold = s.hold(ns, &key);
        let labels = Labels::from([(LABEL_SNAPSHOT_REF.to_owned(), self.chain.to_string())]);
        s.prepare(ns, &key, None, labels)?;
        if let Err(e) = self.apply(s, &key) {
            let _ = s.remove(ns, &key);
            return Err(e);
        }
        Ok(Extracted {
            ns: self.ns,
            index: self.index,
            key,
            _hold: hold,
        })
    }

    fn apply(&self, s: &Snapshotter, key: &str) -> Result<()> {
        let index = self.index;
        let unpack_err = |source| ImageError::Unpack {
            index,
            layer: self.layer.digest.clone(),
            source,
        };
        let dest = s.fs_dir(&self.ns, key)?;
        let compression =
            Compression::from_media_type(&self.layer.media_type).map_err(unpack_err)?;
        let file = std::fs::File::open(&self.blob).map_err(|e| {
            ImageError::Content(ContentError::Io {
                op: "opening",
                path: self.blob.clone(),
                source: e,
            })
        })?;
        // the bottom layer has nothing below it: plain mode keeps its whiteouts (which
        // hide nothing) from becoming device nodes
        let mode = if index == 0 {
            UnpackMode::Plain
        } else {
            UnpackMode::Overlay
        };
        let stats = apply_layer(
            std::io::BufReader::with_capacity(1 << 20, file),
            compression,
            &dest,
            &UnpackOptions::new(mode),
        )
        .map_err(unpack_err)?;
        if stats.diff_id != self.diff_id.as_str() {
            return Err(ImageError::DiffIdMismatch {
                index,
                layer: self.layer.digest.clone(),
                expected: self.diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        debug!(ns = %self.ns, index, chain = %self.chain, entries = stats.entries, "applied layer");
        Ok(())
    }
}

impl Extracted {
    /// Commits as `chain` on `parent`; whether ours was used (`false`: another unpack
    /// committed `chain` first and ours is removed). On error the snapshot is removed.
    fn commit(self, s: &Snapshotter, chain: &Digest, parent: Option<&Digest>) -> Result<bool> {
        let ns = self.ns.as_str();
        match s.commit_on(
            ns,
            chain.as_str(),
            &self.key,
            parent.map(Digest::as_str),
            Labels::new(),
        ) {
            Ok(()) => Ok(true),
            Err(SnapshotError::AlreadyExists { .. }) => {
                debug!(ns, %chain, "layer committed by another unpack meanwhile");
                s.remove(ns, &self.key)?;
                Ok(false)
            }
            Err(e) => {
                let _ = s.remove(ns, &self.key);
                Err(e.into())
            }
        }
    }
}

/// The GC labels of the image's blobs: manifest → config and layers, config → top snapshot,
/// index → manifest.
fn gc_labels(pulled: &PulledImage, unpacked: &Unpacked) -> Vec<(Digest, Labels)> {
    let mut manifest = Labels::new();
    manifest.insert(
        format!("{LABEL_GC_REF_CONTENT}config"),
        pulled.config_digest.to_string(),
    );
    for (i, l) in pulled.layers.iter().enumerate() {
        manifest.insert(format!("{LABEL_GC_REF_CONTENT}l.{i}"), l.digest.clone());
    }
    let mut config = Labels::new();
    if let Some(top) = unpacked.top() {
        config.insert(
            format!("{LABEL_GC_REF_SNAPSHOT}{SNAPSHOTTER_NAME}"),
            top.to_string(),
        );
    }
    vec![
        (pulled.manifest_digest.clone(), manifest),
        (pulled.config_digest.clone(), config),
    ]
}

/// Records image `name` in namespace `ns` → the pulled manifest (or its index), with the
/// content labels the collector follows, in one transaction. Checks first that every blob is
/// in `store` and the top snapshot is committed. Extra `labels` go on the image record.
pub async fn record_image(
    ns: &str,
    name: &str,
    pulled: &PulledImage,
    unpacked: &Unpacked,
    store: &ContentStore,
    snapshotter: &Snapshotter,
    labels: Labels,
) -> Result<ImageRecord> {
    let md: &Metadata = snapshotter.metadata();
    let mut blobs = vec![pulled.manifest_digest.clone(), pulled.config_digest.clone()];
    for l in &pulled.layers {
        blobs.push(Digest::parse(&l.digest)?);
    }
    blobs.extend(pulled.index_digest.clone());
    for b in &blobs {
        store.info(b).await?;
    }
    let target = match &pulled.index_digest {
        Some(index) => Target {
            media_type: index_media_type(store, index).await?,
            digest: index.clone(),
            size: store.info(index).await?.size,
        },
        None => Target {
            media_type: pulled.manifest_media_type.clone(),
            digest: pulled.manifest_digest.clone(),
            size: store.info(&pulled.manifest_digest).await?.size,
        },
    };
    let mut content = gc_labels(pulled, unpacked);
    let top = unpacked.top().cloned();
    let now = Utc::now();
    let record = ImageRecord {
        name: name.to_owned(),
        target,
        labels,
        created: now,
        updated: now,
        manifest: Some(Target {
            media_type: pulled.manifest_media_type.clone(),
            digest: pulled.manifest_digest.clone(),
            size: store.info(&pulled.manifest_digest).await?.size,
        }),
        platform: Some(pulled.platform.to_string()),
    };
    let (ns2, rec2) = (ns.to_owned(), record.clone());
    let index = pulled.index_digest.clone();
    let manifest = pulled.manifest_digest.clone();
    let layers = blobs[2..2 + pulled.layers.len()].to_vec();
    let md2 = md.clone();
    tokio::task::spawn_blocking(move || {
        md2.write(|tx| -> Result<()> {
            let ns = ns2.as_str();
            if let Some(top) = &top {
                match tx.snapshot(ns, top.as_str())? {
                    Some(r) if r.kind == SnapshotKind::Committed => {}
                    _ => return Err(ImageError::SnapshotMissing(top.clone())),
                }
            }
            if let Some(index) = &index {
                // keep the refs to other platforms' manifests recorded by earlier pulls
                let mut labels = tx.content(ns, index)?.map(|c| c.labels).unwrap_or_default();
                let n = labels
                    .keys()
                    .filter(|k| k.starts_with(&format!("{LABEL_GC_REF_CONTENT}m.")))
                    .count();
                if !labels.values().any(|v| v == manifest.as_str()) {
                    labels.insert(format!("{LABEL_GC_REF_CONTENT}m.{n}"), manifest.to_string());
                }
                content.push((index.clone(), labels));
            }
            for l in &layers {
                let labels = tx.content(ns, l)?.map(|c| c.labels).unwrap_or_default();
                content.push((l.clone(), labels));
            }
            for (digest, labels) in content {
                tx.set_content_labels(ns, &digest, labels)?;
            }
            tx.put_image(ns, rec2)?;
            Ok(())
        })
    })
    .await
    .map_err(|e| ImageError::Task {
        index: 0,
        message: e.to_string(),
    })??;
    info!(ns, name, target = %record.target.digest, "recorded image");
    Ok(md.image(ns, name)?.unwrap_or(record))
}

async fn index_media_type(store: &ContentStore, index: &Digest) -> Result<String> {
    #[derive(Deserialize)]
    struct MediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let data = store.read_all(index).await?;
    let mt: MediaType = serde_json::from_slice(&data).map_err(|e| ImageError::InvalidConfig {
        digest: index.clone(),
        reason: e.to_string(),
    })?;
    Ok(mt
        .media_type
        .unwrap_or_else(|| crate::pull::OCI_INDEX.to_owned()))
}
