//! The Images service: pull (download, unpack, record under a lease), list, inspect, tag,
//! remove, prune, mount and unmount, over the metadata DB's image records.
//!
//! A pull runs in a task of its own (a client that goes away does not cancel it):
//!
//! 1. the in-process GC guard ([`Metadata::lease`]) and a lease record (`pull-<random>`,
//!    expiring after [`PULL_LEASE_TTL`]);
//! 2. `Puller::pull`: blobs into the content store, each added to the lease once in;
//! 3. the chain IDs added to the lease, then `unpack_image`: layers into committed snapshots
//!    keyed by chain ID;
//! 4. `record_image`: the image record and the content's GC labels, one transaction;
//! 5. the lease is deleted.
//!
//! A `kill -9` before step 4 commits leaves no image; the lease left behind keeps the
//! finished blobs and snapshots until it expires, so a repeated pull reuses them (and the
//! ingests of interrupted downloads resume).

use super::service::{
    blocking, gc_status, image_status, metadata_status, namespace, snapshot_status, time, Stream_,
};
use super::Daemon;
use crate::content::{ContentError, Digest};
use crate::gc;
use crate::image::{diff_ids, record_image, unpack_image, ImageLayers, Unpacked, SNAPSHOTTER_NAME};
use crate::metadata::{
    ImageRecord, Labels, LeaseRecord, Metadata, MetadataError, SnapshotKind, LABEL_GC_REF_SNAPSHOT,
};
use crate::pull::{
    parse_reference, BlobKind, OciImageManifest, Platform, Progress, ProgressState, PullError,
    PullOptions, PulledImage, Puller,
};
use crate::snapshot::chain_ids;
use chrono::Utc;
use rcd_proto::v1 as pb;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// How long a pull's lease protects its work after the daemon died mid-pull.
pub const PULL_LEASE_TTL: Duration = Duration::from_secs(3600);

/// Labels on an image mount's snapshot: the image mounted, and where.
pub const LABEL_MOUNT_IMAGE: &str = "rcd.io/mount.image";
pub const LABEL_MOUNT_TARGET: &str = "rcd.io/mount.target";

pub struct ImagesService(pub Arc<Daemon>);

fn pull_status(e: &PullError) -> Status {
    let msg = e.to_string();
    match e {
        PullError::InvalidReference { .. } => Status::invalid_argument(msg),
        PullError::Config { .. } => Status::invalid_argument(msg),
        PullError::NotFound { .. } | PullError::NoMatchingPlatform { .. } => Status::not_found(msg),
        PullError::Unauthorized { .. } => Status::unauthenticated(msg),
        PullError::Transport { .. } => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

fn push_status(e: &crate::push::PushError) -> Status {
    use crate::push::PushError as E;
    let msg = e.to_string();
    match e {
        E::InvalidReference { .. } | E::Config { .. } => Status::invalid_argument(msg),
        E::Unauthorized { .. } => Status::unauthenticated(msg),
        E::Transport { .. } => Status::unavailable(msg),
        E::MissingContent { .. } => Status::failed_precondition(msg),
        _ => Status::internal(msg),
    }
}

fn parse_platform(p: &str) -> Result<Platform, Status> {
    if p.is_empty() {
        return Ok(Platform::host());
    }
    p.parse()
        .map_err(|e: crate::pull::InvalidPlatform| Status::invalid_argument(e.to_string()))
}

fn kind_name(k: BlobKind) -> &'static str {
    match k {
        BlobKind::Index => "index",
        BlobKind::Manifest => "manifest",
        BlobKind::Config => "config",
        BlobKind::Layer => "layer",
    }
}

fn state_name(s: ProgressState) -> &'static str {
    match s {
        ProgressState::Waiting => "waiting",
        ProgressState::Downloading => "downloading",
        ProgressState::Exists => "exists",
        ProgressState::Done => "done",
    }
}

/// The stored name for what a user typed: the normalised reference if it parses
/// (`busybox` → `docker.io/library/busybox:latest`), else the text as is.
fn image_name(name: &str) -> String {
    parse_reference(name)
        .map(|r| r.whole())
        .unwrap_or_else(|_| name.to_owned())
}

fn not_found(ns: &str, name: &str) -> Status {
    Status::not_found(format!("image {name:?} not found in namespace {ns:?}"))
}

/// The record named `name` as typed or normalised.
fn find(md: &Metadata, ns: &str, name: &str) -> Result<ImageRecord, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("image name is empty"));
    }
    if let Some(r) = md.image(ns, name).map_err(metadata_status)? {
        return Ok(r);
    }
    md.image(ns, &image_name(name))
        .map_err(metadata_status)?
        .ok_or_else(|| not_found(ns, name))
}

/// The digests an image is known by: target, manifest, config (its ID, as docker's).
async fn digests_of(d: &Daemon, rec: &ImageRecord) -> Vec<Digest> {
    let mut out = vec![rec.target.digest.clone()];
    if let Some(m) = &rec.manifest {
        out.push(m.digest.clone());
        if let Ok(data) = d.store.read_all(&m.digest).await {
            if let Ok(m) = serde_json::from_slice::<OciImageManifest>(&data) {
                out.extend(Digest::parse(&m.config.digest).ok());
            }
        }
    }
    out
}

/// The images `text` names: a name (as typed or normalised: one image); else a digest
/// (`sha256:` + 64 hex) or an ID prefix (12 to 64 hex) of their target, manifest or config
/// (every name of it; a prefix of several different images is refused as ambiguous).
async fn resolve(d: &Daemon, ns: &str, text: &str) -> Result<Vec<ImageRecord>, Status> {
    match find(&d.md, ns, text) {
        Ok(r) => Ok(vec![r]),
        Err(e) if e.code() != tonic::Code::NotFound => Err(e),
        Err(e) => {
            let hex = text.strip_prefix("sha256:");
            let prefix = match hex {
                Some(_) => Digest::parse(text)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
                    .hex()
                    .to_owned(),
                None if (12..=64).contains(&text.len())
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
                {
                    text.to_owned()
                }
                None => return Err(e),
            };
            let mut hits = Vec::new();
            for r in d.md.images(ns).map_err(metadata_status)? {
                if digests_of(d, &r)
                    .await
                    .iter()
                    .any(|g| g.hex().starts_with(&prefix))
                {
                    hits.push(r);
                }
            }
            if hits.is_empty() {
                return Err(Status::not_found(format!(
                    "no image with digest or ID {text} in namespace {ns:?}"
                )));
            }
            if hits.iter().any(|r| r.target != hits[0].target) {
                return Err(Status::failed_precondition(format!(
                    "{text} is ambiguous: it matches images {}",
                    hits.iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Ok(hits)
        }
    }
}

/// One image, named as [`resolve`] takes it.
async fn resolve_one(d: &Daemon, ns: &str, text: &str) -> Result<ImageRecord, Status> {
    Ok(resolve(d, ns, text).await?.swap_remove(0))
}

/// Where image mounts are: target → image name, from the mount snapshots' labels.
fn mounts_of(d: &Daemon, ns: &str) -> Result<Vec<(String, String)>, Status> {
    Ok(d.snapshotter
        .list(ns)
        .map_err(snapshot_status)?
        .into_iter()
        .filter_map(|s| {
            Some((
                s.labels.get(LABEL_MOUNT_TARGET)?.clone(),
                s.labels.get(LABEL_MOUNT_IMAGE)?.clone(),
            ))
        })
        .collect())
}

fn desc(t: &crate::metadata::Target) -> pb::Descriptor {
    pb::Descriptor {
        media_type: t.media_type.clone(),
        digest: t.digest.to_string(),
        size: t.size as i64,
    }
}

fn oci_desc(d: &crate::pull::OciDescriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
    }
}

/// What the store holds of an image: the API's view, with a `problem` when something it
/// needs is gone. `docs` also returns the manifest and config documents.
async fn view(d: &Daemon, ns: &str, rec: &ImageRecord) -> (pb::Image, Vec<u8>, Vec<u8>) {
    let manifest_t = rec.manifest.clone().unwrap_or_else(|| rec.target.clone());
    let platform = rec
        .platform
        .as_deref()
        .and_then(|p| p.parse::<Platform>().ok());
    let mut img = pb::Image {
        name: rec.name.clone(),
        target: Some(desc(&rec.target)),
        manifest: Some(desc(&manifest_t)),
        platform: platform.map(|p| pb::Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant.unwrap_or_default(),
        }),
        created_at: time(&rec.created),
        updated_at: time(&rec.updated),
        labels: rec.labels.clone().into_iter().collect(),
        ..Default::default()
    };
    let mut problems = Vec::new();
    let missing =
        |what: &str, digest: &str| format!("{what} {digest} missing from the content store");
    let (mut manifest_doc, mut config_doc) = (Vec::new(), Vec::new());
    if !d.store.exists(&rec.target.digest).await.unwrap_or(false) {
        problems.push(missing("target", rec.target.digest.as_str()));
    }
    match d.store.read_all(&manifest_t.digest).await {
        Err(ContentError::NotFound(_)) => {
            problems.push(missing("manifest", manifest_t.digest.as_str()))
        }
        Err(e) => problems.push(e.to_string()),
        Ok(data) => {
            match serde_json::from_slice::<OciImageManifest>(&data) {
                Err(e) => problems.push(format!("manifest {}: {e}", manifest_t.digest)),
                Ok(m) => {
                    img.config = Some(oci_desc(&m.config));
                    img.layers = m.layers.iter().map(oci_desc).collect();
                    img.size = manifest_t.size as i64
                        + m.config.size
                        + m.layers.iter().map(|l| l.size).sum::<i64>();
                    match Digest::parse(&m.config.digest) {
                        Err(e) => problems.push(format!("config: {e}")),
                        Ok(c) => match d.store.read_all(&c).await {
                            Ok(data) => config_doc = data,
                            Err(ContentError::NotFound(_)) => {
                                problems.push(missing("config", &m.config.digest))
                            }
                            Err(e) => problems.push(e.to_string()),
                        },
                    }
                    for l in &m.layers {
                        let ok = match Digest::parse(&l.digest) {
                            Ok(ld) => d.store.exists(&ld).await.unwrap_or(false),
                            Err(_) => false,
                        };
                        if !ok {
                            problems.push(missing("layer", &l.digest));
                        }
                    }
                    // unpacked: the config's snapshot reference, and that chain in place
                    if let Ok(c) = Digest::parse(&m.config.digest) {
                        let key = format!("{LABEL_GC_REF_SNAPSHOT}{SNAPSHOTTER_NAME}");
                        let top =
                            d.md.read(|tx| tx.content(ns, &c))
                                .ok()
                                .flatten()
                                .and_then(|r| r.labels.get(&key).cloned());
                        if let Some(top) = top {
                            match chain_usage(&d.snapshotter, ns, &top) {
                                Ok(size) => {
                                    img.snapshot = top;
                                    img.unpacked_size = size as i64;
                                }
                                Err(e) => problems.push(format!("unpacked rootfs: {e}")),
                            }
                        }
                    }
                }
            }
            manifest_doc = data;
        }
    }
    img.problem = problems.join("; ");
    (img, manifest_doc, config_doc)
}

/// Disk usage of a committed snapshot and its parents; an error names a missing one.
fn chain_usage(
    s: &crate::snapshot::Snapshotter,
    ns: &str,
    top: &str,
) -> Result<u64, crate::snapshot::SnapshotError> {
    let mut total = 0;
    let mut next = Some(top.to_owned());
    while let Some(k) = next {
        let r = s.stat(ns, &k)?;
        total += r.size.unwrap_or(0);
        next = r.parent;
    }
    Ok(total)
}

/// Download, unpack, record; see the module docs.
pub(crate) async fn pull_and_record(
    d: &Daemon,
    ns: &str,
    puller: &Puller,
    reference: &str,
    opts: &PullOptions,
    unpack: bool,
    events: &mpsc::Sender<Result<pb::PullResponse, Status>>,
) -> Result<ImageRecord, Status> {
    let _guard = d.md.lease().await;
    let lease_id = create_work_lease(d, ns, "pull", reference).await?;
    let result = async {
        // Each blob joins the lease as soon as it is in the store (a few per transaction),
        // so that a daemon killed mid-pull keeps what it finished.
        let (btx, brx) = mpsc::unbounded_channel::<Digest>();
        // taken out when the pull returns, which closes the channel even if a download task
        // still holds the callback
        let btx = Arc::new(Mutex::new(Some(btx)));
        let sender = btx.clone();
        let inner = opts.progress.clone();
        let leased = PullOptions {
            progress: Some(Arc::new(move |p: &Progress| {
                if matches!(p.state, ProgressState::Done | ProgressState::Exists) {
                    if let Some(tx) = &*sender.lock().unwrap() {
                        let _ = tx.send(p.digest.clone());
                    }
                }
                if let Some(f) = &inner {
                    f(p)
                }
            })),
            ..opts.clone()
        };
        let recorder = tokio::spawn(lease_blobs(
            d.md.clone(),
            ns.to_owned(),
            lease_id.clone(),
            brx,
        ));
        let pulled = puller.pull(reference, &leased).await;
        drop(leased);
        btx.lock().unwrap().take();
        let leased = recorder.await;
        // the pull's own error first: it says more than the lease's
        let pulled = pulled.map_err(|e| pull_status(&e))?;
        leased.map_err(|e| Status::internal(format!("lease task: {e}")))??;
        unpack_and_record(d, ns, &lease_id, &pulled, unpack, Some(events)).await
    }
    .await;
    // recorded or failed: the lease has done its work either way (what a failed pull
    // fetched is collected, its ingests stay for the next try)
    delete_work_lease(d, ns, lease_id).await;
    // The pull's buffers (layer streams, decompression state, TLS) are freed by now, but
    // glibc keeps the freed pages in its arenas: give them back, so that the daemon's RSS
    // returns to its working set rather than to its last pull's peak.
    // SAFETY: malloc_trim(3) has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    result
}

/// Creates a lease for work on `what` (a pull or an import), expiring after
/// [`PULL_LEASE_TTL`]; its id.
async fn create_work_lease(
    d: &Daemon,
    ns: &str,
    label: &str,
    what: &str,
) -> Result<String, Status> {
    let id = format!("{label}-{:016x}", fastrand::u64(..));
    let now = Utc::now();
    let lease = LeaseRecord {
        id: id.clone(),
        labels: Labels::from([(format!("rcd.io/{label}"), what.to_owned())]),
        created: now,
        expires: Some(now + chrono::Duration::from_std(PULL_LEASE_TTL).unwrap()),
        content: Default::default(),
        snapshots: Default::default(),
    };
    let md = d.md.clone();
    let ns_ = ns.to_owned();
    blocking(move || {
        md.write(|tx| tx.create_lease(&ns_, &lease))
            .map_err(metadata_status)
    })
    .await?;
    Ok(id)
}

/// Deletes a work lease (logged, not failed: it expires anyway).
async fn delete_work_lease(d: &Daemon, ns: &str, id: String) {
    let md = d.md.clone();
    let ns_ = ns.to_owned();
    let deleted = blocking(move || {
        md.write(|tx| tx.delete_lease(&ns_, &id))
            .map_err(metadata_status)
    })
    .await;
    if let Err(e) = deleted {
        warn!(namespace = %ns, error = %e.message(), "deleting a lease");
    }
}

/// The second half of a pull or an import: every blob of `pulled` (in the store) into the
/// lease, the chain IDs too, the unpack (unless `unpack` is false; its progress on `events`),
/// then the record.
async fn unpack_and_record(
    d: &Daemon,
    ns: &str,
    lease_id: &str,
    pulled: &PulledImage,
    unpack: bool,
    events: Option<&mpsc::Sender<Result<pb::PullResponse, Status>>>,
) -> Result<ImageRecord, Status> {
    let mut blobs = vec![pulled.manifest_digest.clone(), pulled.config_digest.clone()];
    blobs.extend(pulled.index_digest.clone());
    for l in &pulled.layers {
        blobs.push(Digest::parse(&l.digest).map_err(|e| Status::internal(e.to_string()))?);
    }
    add_to_lease(d, ns, lease_id, blobs, vec![]).await?;
    let unpacked = if unpack {
        let layers = ImageLayers::try_from(pulled).map_err(image_status)?;
        // the chain IDs join the lease before they exist: each layer is kept as soon as
        // it is committed
        let diff_ids = diff_ids(&d.store, &layers.config)
            .await
            .map_err(image_status)?;
        let chains = chain_ids(&diff_ids).iter().map(|c| c.to_string()).collect();
        add_to_lease(d, ns, lease_id, vec![], chains).await?;
        let unpack_event = |state: &str, offset: usize| pb::PullResponse {
            event: Some(pb::pull_response::Event::Progress(pb::PullProgress {
                digest: layers.config.to_string(),
                kind: "unpack".into(),
                state: state.into(),
                offset: offset as u64,
                total: layers.layers.len() as u64,
            })),
        };
        // a client that went away does not stop the pull
        if let Some(ev) = events {
            let _ = ev.send(Ok(unpack_event("unpacking", 0))).await;
        }
        let u = unpack_image(ns, &layers, &d.store, &d.snapshotter)
            .await
            .map_err(|e| {
                Status::internal(format!(
                    "{}: unpacking: {}",
                    pulled.name,
                    image_status(e).message()
                ))
            })?;
        if let Some(ev) = events {
            let _ = ev.send(Ok(unpack_event("done", u.applied))).await;
        }
        u
    } else {
        Unpacked {
            diff_ids: vec![],
            chain_ids: vec![],
            applied: 0,
        }
    };
    let existed = d.md.image(ns, &pulled.name).ok().flatten().is_some();
    let rec = record_image(
        ns,
        &pulled.name,
        pulled,
        &unpacked,
        &d.store,
        &d.snapshotter,
        Labels::new(),
    )
    .await
    .map_err(image_status)?;
    image_event(d, ns, &rec.name, existed);
    Ok(rec)
}

/// containerd's `/images/create` or `/images/update` event for `name`.
pub(crate) fn image_event(d: &Daemon, ns: &str, name: &str, existed: bool) {
    let topic = if existed {
        "/images/update"
    } else {
        "/images/create"
    };
    d.events.publish(ns, topic, &[("name", name.to_owned())]);
}

/// containerd's `/images/delete` event for each of `names`.
pub(crate) fn images_deleted(d: &Daemon, ns: &str, names: &[String]) {
    for n in names {
        d.events
            .publish(ns, "/images/delete", &[("name", n.to_owned())]);
    }
}

/// What an imported image `target` holds for `platform`, as a pull would have found it: an
/// index's matching manifest (present in the store), its config and layers.
async fn imported_image(
    d: &Daemon,
    name: &str,
    target: &crate::archive::Descriptor,
    platform: &Platform,
) -> Result<PulledImage, Status> {
    let bad = |reason: String| Status::invalid_argument(format!("import of {name}: {reason}"));
    let read = |digest: Digest| async move {
        d.store
            .read_all(&digest)
            .await
            .map_err(super::service::content_status)
    };
    let (index_digest, manifest_desc) =
        if target.media_type.contains("index") || target.media_type.contains("manifest.list") {
            let data = read(target.digest.clone()).await?;
            let index: crate::pull::OciImageIndex =
                serde_json::from_slice(&data).map_err(|e| bad(format!("index: {e}")))?;
            let mut chosen = None;
            let mut available = Vec::new();
            for m in &index.manifests {
                let Some(p) = &m.platform else { continue };
                let p = Platform::new(
                    &p.os.to_string(),
                    &p.architecture.to_string(),
                    p.variant.as_deref(),
                );
                let digest = Digest::parse(&m.digest).map_err(|e| bad(e.to_string()))?;
                if !d.store.exists(&digest).await.unwrap_or(false) {
                    continue;
                }
                available.push(p.to_string());
                if chosen.is_none() && platform.matches(&p) {
                    chosen = Some((digest, m.media_type.clone()));
                }
            }
            let chosen = chosen.ok_or_else(|| {
                Status::not_found(format!(
                "import of {name}: no manifest for platform {platform} in the archive (it has: {})",
                available.join(", ")
            ))
            })?;
            (Some(target.digest.clone()), chosen)
        } else {
            (None, (target.digest.clone(), target.media_type.clone()))
        };
    let data = read(manifest_desc.0.clone()).await?;
    let manifest: OciImageManifest =
        serde_json::from_slice(&data).map_err(|e| bad(format!("manifest: {e}")))?;
    let config_digest = Digest::parse(&manifest.config.digest).map_err(|e| bad(e.to_string()))?;
    let config = read(config_digest.clone()).await?;
    #[derive(serde::Deserialize)]
    struct ConfigPlatform {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        variant: Option<String>,
    }
    let cp: ConfigPlatform =
        serde_json::from_slice(&config).map_err(|e| bad(format!("config: {e}")))?;
    Ok(PulledImage {
        name: name.to_owned(),
        index_digest,
        manifest_digest: manifest_desc.0,
        manifest_media_type: manifest_desc.1,
        layers: manifest.layers.clone(),
        manifest,
        config_digest,
        platform: Platform::new(&cp.os, &cp.architecture, cp.variant.as_deref()),
        endpoint: "archive".into(),
    })
}

/// Adds the digests arriving on `rx` to the lease, batching what has queued up.
async fn lease_blobs(
    md: Metadata,
    ns: String,
    id: String,
    mut rx: mpsc::UnboundedReceiver<Digest>,
) -> Result<(), Status> {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(d) = rx.try_recv() {
            batch.push(d);
        }
        let (md, ns, id) = (md.clone(), ns.clone(), id.clone());
        blocking(move || {
            md.write(|tx| tx.add_lease_resources(&ns, &id, batch, Vec::<String>::new()))
                .map_err(metadata_status)
        })
        .await?;
    }
    Ok(())
}

async fn add_to_lease(
    d: &Daemon,
    ns: &str,
    id: &str,
    blobs: Vec<Digest>,
    snapshots: Vec<String>,
) -> Result<(), Status> {
    let (md, ns, id) = (d.md.clone(), ns.to_owned(), id.to_owned());
    blocking(move || {
        md.write(|tx| tx.add_lease_resources(&ns, &id, blobs, snapshots))
            .map_err(metadata_status)
    })
    .await
}

/// Collects now, or in the background.
async fn collect(d: &Arc<Daemon>, sync: bool) -> Result<gc::GcStats, Status> {
    if sync {
        return gc::collect(&d.store, &d.snapshotter)
            .await
            .map_err(gc_status);
    }
    let d = d.clone();
    tokio::spawn(async move {
        if let Err(e) = gc::collect(&d.store, &d.snapshotter).await {
            warn!(error = %e, "background garbage collection failed");
        }
    });
    Ok(gc::GcStats::default())
}

/// Downloading events are forwarded at most this often per blob (others always).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

#[tonic::async_trait]
impl pb::images_server::Images for ImagesService {
    type PullStream = Stream_<pb::PullResponse>;

    async fn pull(
        &self,
        req: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let reference = parse_reference(&req.reference).map_err(|e| pull_status(&e))?;
        let platform = if req.platform.is_empty() {
            Platform::host()
        } else {
            req.platform
                .parse()
                .map_err(|e: crate::pull::InvalidPlatform| {
                    Status::invalid_argument(e.to_string())
                })?
        };
        let d = self.0.clone();
        // Per-call settings get their own puller over the same store (kept for reuse).
        let puller = if req.plain_http || !req.username.is_empty() {
            let host = reference.registry().to_owned();
            let key = (
                host.clone(),
                req.plain_http,
                req.username.clone(),
                req.password.clone(),
            );
            let mut pullers = d.pullers.lock().unwrap();
            if let Some(p) = pullers.get(&key) {
                p.clone()
            } else {
                let mut cfg = d.puller.config().clone();
                if req.plain_http {
                    cfg = cfg.plain_http(&host);
                }
                if !req.username.is_empty() {
                    cfg = cfg.credentials(&host, &req.username, &req.password);
                }
                let p = Arc::new(Puller::new(d.store.clone(), cfg));
                if pullers.len() >= super::MAX_PULLERS {
                    pullers.clear();
                }
                pullers.insert(key, p.clone());
                p
            }
        } else {
            d.puller.clone()
        };
        let (tx, rx) = mpsc::channel::<Result<pb::PullResponse, Status>>(256);
        let ptx = tx.clone();
        let last: Mutex<HashMap<String, Instant>> = Mutex::new(HashMap::new());
        let progress = Arc::new(move |p: &Progress| {
            if p.state == ProgressState::Downloading && p.offset < p.total {
                let mut last = last.lock().unwrap();
                let now = Instant::now();
                match last.get(p.digest.as_str()) {
                    Some(t) if now.duration_since(*t) < PROGRESS_INTERVAL => return,
                    _ => {
                        last.insert(p.digest.to_string(), now);
                    }
                }
            }
            let ev = pb::PullResponse {
                event: Some(pb::pull_response::Event::Progress(pb::PullProgress {
                    digest: p.digest.to_string(),
                    kind: kind_name(p.kind).to_owned(),
                    state: state_name(p.state).to_owned(),
                    offset: p.offset,
                    total: p.total,
                })),
            };
            // A full channel (slow client) drops a byte count, never a state change:
            // those are few.
            if ptx.try_send(Ok(ev.clone())).is_err() && p.state != ProgressState::Downloading {
                let ptx = ptx.clone();
                tokio::spawn(async move {
                    let _ = ptx.send(Ok(ev)).await;
                });
            }
        });
        let opts = PullOptions {
            platform,
            progress: Some(progress),
            ..PullOptions::default()
        };
        let image = req.reference.clone();
        let unpack = !req.no_unpack;
        tokio::spawn(async move {
            let started = Instant::now();
            let result = pull_and_record(&d, &ns, &puller, &image, &opts, unpack, &tx).await;
            drop(opts);
            match result {
                Ok(rec) => {
                    info!(namespace = %ns, image = %rec.name, digest = %rec.target.digest,
                          unpack, elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
                    let (img, _, _) = view(&d, &ns, &rec).await;
                    let _ = tx
                        .send(Ok(pb::PullResponse {
                            event: Some(pb::pull_response::Event::Image(img)),
                        }))
                        .await;
                }
                Err(status) => {
                    warn!(namespace = %ns, %image, error = %status.message(), "pull failed");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let ns = namespace(&req)?;
        let md = self.0.md.clone();
        let ns_ = ns.clone();
        let records = blocking(move || md.images(&ns_).map_err(metadata_status)).await?;
        let mut images = Vec::with_capacity(records.len());
        for r in &records {
            images.push(view(&self.0, &ns, r).await.0);
        }
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn get(
        &self,
        req: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let rec = resolve_one(&self.0, &ns, &name).await?;
        let (image, manifest, config) = view(&self.0, &ns, &rec).await;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(image),
            manifest,
            config,
        }))
    }

    async fn tag(
        &self,
        req: Request<pb::TagImageRequest>,
    ) -> Result<Response<pb::TagImageResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let src = resolve_one(&self.0, &ns, &req.source).await?;
        let target = parse_reference(&req.target)
            .map_err(|e| pull_status(&e))?
            .whole();
        let md = self.0.md.clone();
        let ns_ = ns.clone();
        let force = req.force;
        let rec = blocking(move || {
            // the inner Err writes nothing, so committing it is harmless
            // with whether the name existed, `None` when nothing changed
            md.write(|tx| -> Result<Result<(ImageRecord, Option<bool>), Status>, MetadataError> {
                if let Some(old) = tx.image(&ns_, &target)? {
                    if old.target == src.target && old.manifest == src.manifest {
                        return Ok(Ok((old, None)));
                    }
                    if !force {
                        return Ok(Err(Status::already_exists(format!(
                            "image {target:?} already exists in namespace {ns_:?} (points to {}): use --force to replace it",
                            old.target.digest
                        ))));
                    }
                }
                let existed = tx.image(&ns_, &target)?.is_some();
                let now = Utc::now();
                let rec = ImageRecord {
                    name: target.clone(),
                    created: now,
                    updated: now,
                    ..src
                };
                tx.put_image(&ns_, rec.clone())?;
                Ok(Ok((rec, Some(existed))))
            })
            .map_err(metadata_status)?
        })
        .await?;
        let (rec, changed) = rec;
        if let Some(existed) = changed {
            image_event(&self.0, &ns, &rec.name, existed);
        }
        info!(namespace = %ns, source = %req.source, target = %rec.name, "tagged");
        let (image, _, _) = view(&self.0, &ns, &rec).await;
        Ok(Response::new(pb::TagImageResponse { image: Some(image) }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let name = req.name;
        let names: Vec<String> = resolve(&self.0, &ns, &name)
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        let md = self.0.md.clone();
        let (ns_, names_) = (ns.clone(), names.clone());
        blocking(move || {
            // checked in the transaction that deletes: a mount made meanwhile is seen
            md.write(|tx| -> Result<Result<(), Status>, MetadataError> {
                for s in tx.snapshots(&ns_)? {
                    let (Some(target), Some(image)) = (
                        s.labels.get(LABEL_MOUNT_TARGET),
                        s.labels.get(LABEL_MOUNT_IMAGE),
                    ) else {
                        continue;
                    };
                    if names_.contains(image) {
                        return Ok(Err(Status::failed_precondition(format!(
                            "image {image:?} is mounted at {target}: unmount it first (rctr images unmount {target})"
                        ))));
                    }
                }
                for n in &names_ {
                    tx.delete_image(&ns_, n)?;
                }
                Ok(Ok(()))
            })
            .map_err(metadata_status)?
        })
        .await?;
        info!(namespace = %ns, images = ?names, "images deleted");
        images_deleted(&self.0, &ns, &names);
        collect(&self.0, req.sync).await?;
        Ok(Response::new(pb::DeleteImageResponse { names }))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneImagesRequest>,
    ) -> Result<Response<pb::PruneImagesResponse>, Status> {
        let ns = namespace(&req)?;
        let all = req.into_inner().all;
        let mut removed = Vec::new();
        if all {
            let mounted: Vec<String> = mounts_of(&self.0, &ns)?.into_iter().map(|m| m.1).collect();
            let md = self.0.md.clone();
            let ns_ = ns.clone();
            removed = blocking(move || {
                md.write(|tx| {
                    let mut out = Vec::new();
                    for r in tx.images(&ns_)? {
                        if !mounted.contains(&r.name) {
                            tx.delete_image(&ns_, &r.name)?;
                            out.push(r.name);
                        }
                    }
                    Ok(out)
                })
                .map_err(metadata_status)
            })
            .await?;
        }
        images_deleted(&self.0, &ns, &removed);
        let stats = collect(&self.0, true).await?;
        info!(namespace = %ns, images = ?removed, blobs = stats.blobs.len(), "pruned");
        Ok(Response::new(pb::PruneImagesResponse {
            images: removed,
            blobs: stats.blobs.len() as u64,
            snapshots: stats.snapshots.len() as u64,
            bytes: stats.bytes,
        }))
    }

    async fn mount(
        &self,
        req: Request<pb::MountImageRequest>,
    ) -> Result<Response<pb::MountImageResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let target = mount_target(&req.target)?;
        let rec = resolve_one(&self.0, &ns, &req.name).await?;
        let (img, _, _) = view(&self.0, &ns, &rec).await;
        if !img.problem.is_empty() {
            return Err(Status::failed_precondition(format!(
                "image {:?} is broken: {}",
                rec.name, img.problem
            )));
        }
        if img.snapshot.is_empty() {
            return Err(Status::failed_precondition(format!(
                "image {:?} is not unpacked: pull it again without --no-unpack",
                rec.name
            )));
        }
        let key = target.display().to_string();
        let labels = Labels::from([
            (LABEL_MOUNT_IMAGE.to_owned(), rec.name.clone()),
            (LABEL_MOUNT_TARGET.to_owned(), key.clone()),
        ]);
        let s = self.0.snapshotter.clone();
        let (ns_, top, rw) = (ns.clone(), img.snapshot.clone(), req.rw);
        let mounts = blocking(move || {
            let made = if rw {
                s.prepare(&ns_, &key, Some(&top), labels)
            } else {
                s.view(&ns_, &key, Some(&top), labels)
            };
            let mounts = made.map_err(|e| match e {
                crate::snapshot::SnapshotError::AlreadyExists { .. } => Status::already_exists(
                    format!("{key} already has an image mounted (rctr images unmount {key})"),
                ),
                e => snapshot_status(e),
            })?;
            if let Err(e) = crate::snapshot::mount_all(&mounts, Path::new(&key)) {
                let _ = s.remove(&ns_, &key);
                return Err(Status::internal(e.to_string()));
            }
            Ok(mounts)
        })
        .await?;
        info!(namespace = %ns, image = %rec.name, target = %target.display(), rw = req.rw, "mounted");
        Ok(Response::new(pb::MountImageResponse {
            snapshot: target.display().to_string(),
            mounts: mounts.iter().map(super::snapshots::pb_mount).collect(),
        }))
    }

    async fn unmount(
        &self,
        req: Request<pb::UnmountImageRequest>,
    ) -> Result<Response<pb::UnmountImageResponse>, Status> {
        let ns = namespace(&req)?;
        let target = unmount_target(&req.into_inner().target)?;
        let key = target.display().to_string();
        let s = self.0.snapshotter.clone();
        let ns_ = ns.clone();
        blocking(move || {
            let rec = match s.stat(&ns_, &key) {
                Ok(r) if r.labels.contains_key(LABEL_MOUNT_TARGET) => r,
                Ok(_) | Err(crate::snapshot::SnapshotError::NotFound { .. }) => {
                    return Err(Status::not_found(format!(
                        "no image is mounted at {key} in namespace {ns_:?}"
                    )))
                }
                Err(e) => return Err(snapshot_status(e)),
            };
            // The mount may be gone already (unmounted by hand, a reboot): the snapshot still
            // has to go.
            if let Err(e) = crate::snapshot::unmount(Path::new(&key)) {
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(Status::internal(format!("unmounting {key}: {e}")));
                }
                warn!(target = %key, "was not mounted; removing its snapshot");
            }
            debug_assert!(rec.kind != SnapshotKind::Committed);
            s.remove(&ns_, &key).map_err(snapshot_status)
        })
        .await?;
        info!(namespace = %ns, target = %target.display(), "unmounted");
        Ok(Response::new(pb::UnmountImageResponse {}))
    }

    type ExportStream = Stream_<pb::ExportImagesResponse>;

    async fn export(
        &self,
        req: Request<pb::ExportImagesRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        if req.names.is_empty() {
            return Err(Status::invalid_argument("export: no images given"));
        }
        let platform = parse_platform(&req.platform)?;
        let mut images = Vec::new();
        for n in &req.names {
            let rec = resolve_one(&self.0, &ns, n).await?;
            images.push(crate::archive::ExportImage {
                name: rec.name.clone(),
                target: crate::archive::Descriptor::new(
                    rec.target.media_type.clone(),
                    rec.target.digest.clone(),
                    rec.target.size,
                ),
            });
        }
        let d = self.0.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::ExportImagesResponse, Status>>(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            // the GC guard keeps the blobs while they are read
            let _guard = d.md.lease().await;
            let (writer, mut reader) = tokio::io::duplex(1 << 20);
            let opts = crate::archive::ExportOptions {
                platform,
                ..Default::default()
            };
            let store = d.store.clone();
            let task = tokio::spawn(async move {
                crate::archive::export(&store, &images, writer, &opts).await
            });
            let mut buf = vec![0u8; 1 << 20];
            let mut gone = false;
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let msg = pb::ExportImagesResponse {
                            data: buf[..n].to_vec(),
                        };
                        if !gone && tx.send(Ok(msg)).await.is_err() {
                            // the client went away: drain so the export ends
                            gone = true;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("export: {e}")))).await;
                        return;
                    }
                }
            }
            match task.await {
                Ok(Ok(stats)) => {
                    info!(namespace = %ns, blobs = stats.blobs, bytes = stats.blob_bytes, "exported")
                }
                Ok(Err(e)) => {
                    let status = match &e {
                        crate::archive::ArchiveError::MissingBlob { .. } => {
                            Status::failed_precondition(e.to_string())
                        }
                        crate::archive::ArchiveError::InvalidName { .. } => {
                            Status::invalid_argument(e.to_string())
                        }
                        _ => Status::internal(e.to_string()),
                    };
                    warn!(namespace = %ns, error = %e, "export failed");
                    let _ = tx.send(Err(status)).await;
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("export task: {e}"))))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type PushStream = Stream_<pb::PushImageResponse>;

    async fn push(
        &self,
        req: Request<pb::PushImageRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let remote = parse_reference(&req.remote).map_err(|e| pull_status(&e))?;
        let local = if req.local.is_empty() {
            remote.whole()
        } else {
            req.local.clone()
        };
        let rec = resolve_one(&self.0, &ns, &local).await?;
        let platform = if req.platform.is_empty() {
            None
        } else {
            Some(parse_platform(&req.platform)?)
        };
        let host = remote.registry().to_owned();
        let mut config = self.0.puller.config().clone();
        if req.plain_http {
            config = config.plain_http(&host);
        }
        let credentials = (!req.username.is_empty()).then(|| crate::pull::Credentials {
            username: req.username.clone(),
            password: req.password.clone(),
        });
        let (tx, rx) = mpsc::channel::<Result<pb::PushImageResponse, Status>>(256);
        let ptx = tx.clone();
        let progress = Arc::new(move |p: &crate::push::PushProgress| {
            let state = match p.state {
                crate::push::PushState::Exists => "exists",
                crate::push::PushState::Uploading => "uploading",
                crate::push::PushState::Done => "done",
            };
            let ev = pb::PushImageResponse {
                event: Some(pb::push_image_response::Event::Progress(pb::PullProgress {
                    digest: p.digest.to_string(),
                    kind: kind_name(p.kind).to_owned(),
                    state: state.to_owned(),
                    offset: p.offset,
                    total: p.total,
                })),
            };
            // byte counts may be dropped for a slow client, never a state change
            if ptx.try_send(Ok(ev.clone())).is_err() && state != "uploading" {
                let ptx = ptx.clone();
                tokio::spawn(async move {
                    let _ = ptx.send(Ok(ev)).await;
                });
            }
        });
        let opts = crate::push::PushOptions {
            credentials,
            platform,
            progress: Some(progress),
        };
        let d = self.0.clone();
        let target = crate::archive::Descriptor::new(
            rec.target.media_type.clone(),
            rec.target.digest.clone(),
            rec.target.size,
        );
        let remote_name = req.remote.clone();
        tokio::spawn(async move {
            let _guard = d.md.lease().await;
            let r = crate::push::push(&d.store, &config, &target, &remote_name, &opts).await;
            drop(opts);
            let msg = match r {
                Ok(p) => {
                    info!(namespace = %ns, image = %rec.name, remote = %p.name, digest = %p.digest, "pushed");
                    Ok(pb::PushImageResponse {
                        event: Some(pb::push_image_response::Event::Result(pb::PushResult {
                            name: p.name,
                            digest: p.digest.to_string(),
                            uploaded: p.uploaded as u64,
                            skipped: p.skipped as u64,
                        })),
                    })
                }
                Err(e) => {
                    warn!(namespace = %ns, remote = %remote_name, error = %e, "push failed");
                    Err(push_status(&e))
                }
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn import(
        &self,
        req: Request<tonic::Streaming<pb::ImportImagesRequest>>,
    ) -> Result<Response<pb::ImportImagesResponse>, Status> {
        use futures_util::StreamExt;
        let ns = namespace(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("import: no archive sent"))?;
        let platform = parse_platform(&first.platform)?;
        let opts = crate::archive::ImportOptions {
            base_name: (!first.base_name.is_empty()).then(|| first.base_name.clone()),
            ..Default::default()
        };
        let unpack = !first.no_unpack;
        let chunks = futures_util::stream::iter([Ok(first)])
            .chain(stream)
            .map(|m| {
                m.map(|m| std::io::Cursor::new(m.data))
                    .map_err(|s| std::io::Error::other(s.message().to_owned()))
            });
        let reader = tokio_util::io::StreamReader::new(chunks);
        let d = &self.0;
        let _guard = d.md.lease().await;
        let imported = crate::archive::import(&d.store, reader, &opts)
            .await
            .map_err(|e| match e {
                crate::archive::ArchiveError::Write(_)
                | crate::archive::ArchiveError::Content(_) => {
                    Status::internal(format!("import: {e}"))
                }
                // the archive is what the client sent
                e => Status::invalid_argument(format!("import: {e}")),
            })?;
        let lease_id = create_work_lease(d, &ns, "import", "archive").await?;
        let result = async {
            let mut images = Vec::new();
            let mut unnamed = 0;
            for i in &imported {
                let Some(name) = &i.name else {
                    unnamed += 1;
                    continue;
                };
                let pulled = imported_image(d, name, &i.target, &platform).await?;
                let rec = unpack_and_record(d, &ns, &lease_id, &pulled, unpack, None).await?;
                info!(namespace = %ns, image = %rec.name, digest = %rec.target.digest, "imported");
                images.push(view(d, &ns, &rec).await.0);
            }
            Ok::<_, Status>(pb::ImportImagesResponse { images, unnamed })
        }
        .await;
        delete_work_lease(d, &ns, lease_id).await;
        Ok(Response::new(result?))
    }
}

/// An unmount target: as [`mount_target`], or as typed if it is gone.
fn unmount_target(t: &str) -> Result<PathBuf, Status> {
    match mount_target(t) {
        Err(_) if t.starts_with('/') => Ok(PathBuf::from(t)),
        r => r,
    }
}

/// A mount target: absolute, an existing directory, symlinks resolved (the key must name the
/// place the mount really is).
fn mount_target(t: &str) -> Result<PathBuf, Status> {
    if t.is_empty() || !t.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "mount target {t:?} must be an absolute path"
        )));
    }
    let p = std::fs::canonicalize(t)
        .map_err(|e| Status::invalid_argument(format!("mount target {t}: {e}")))?;
    if !p.is_dir() {
        return Err(Status::invalid_argument(format!(
            "mount target {t} is not a directory"
        )));
    }
    if p == Path::new("/") {
        return Err(Status::invalid_argument(format!(
            "mount target {t} is the root directory: refusing to mount over it"
        )));
    }
    Ok(p)
}
