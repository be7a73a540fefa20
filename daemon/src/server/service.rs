//! The gRPC services: Version, Images, Content.

use super::images::{Descriptor, ImageRecord};
use super::Daemon;
use crate::content::{ContentError, Digest};
use crate::pull::{
    parse_reference, BlobKind, Platform, Progress, ProgressState, PullError, PullOptions,
    PulledImage, Puller, OCI_INDEX,
};
use rcd_proto::v1 as pb;
use rcd_proto::{valid_namespace, DEFAULT_NAMESPACE, NAMESPACE_HEADER};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The namespace of a call: the `rcd-namespace` header, else `default`; validated.
fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    match req.metadata().get(NAMESPACE_HEADER) {
        None => Ok(DEFAULT_NAMESPACE.to_owned()),
        Some(v) => {
            let ns = v
                .to_str()
                .map_err(|_| Status::invalid_argument("namespace is not ASCII"))?;
            if !valid_namespace(ns) {
                return Err(Status::invalid_argument(format!(
                    "invalid namespace {ns:?}: letters, digits, '-', '_' in '.'-separated labels"
                )));
            }
            Ok(ns.to_owned())
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub struct VersionService;

#[tonic::async_trait]
impl pb::version_server::Version for VersionService {
    async fn version(
        &self,
        _req: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: option_env!("RCD_REVISION").unwrap_or_default().to_owned(),
        }))
    }
}

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

fn content_status(e: ContentError) -> Status {
    match e {
        ContentError::NotFound(_) => Status::not_found(e.to_string()),
        ContentError::InvalidDigest(_) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
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

fn to_pb_desc(d: &Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
    }
}

pub(super) fn to_pb_image(r: &ImageRecord) -> pb::Image {
    let p: Option<Platform> = r.platform.parse().ok();
    pb::Image {
        name: r.name.clone(),
        target: Some(to_pb_desc(&r.target)),
        manifest: Some(to_pb_desc(&r.manifest)),
        config: Some(to_pb_desc(&r.config)),
        layers: r.layers.iter().map(to_pb_desc).collect(),
        platform: p.map(|p| pb::Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant.unwrap_or_default(),
        }),
        size: r.size,
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
    }
}

/// The record of a finished pull; sizes and the index's media type come from the store.
async fn record(d: &Daemon, img: &PulledImage) -> Result<ImageRecord, Status> {
    let manifest_size = d
        .store
        .info(&img.manifest_digest)
        .await
        .map_err(content_status)?
        .size as i64;
    let manifest = Descriptor {
        media_type: img.manifest_media_type.clone(),
        digest: img.manifest_digest.to_string(),
        size: manifest_size,
    };
    let target = match &img.index_digest {
        None => manifest.clone(),
        Some(idx) => {
            let bytes = d.store.read_all(idx).await.map_err(content_status)?;
            let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| OCI_INDEX.to_owned());
            Descriptor {
                media_type,
                digest: idx.to_string(),
                size: bytes.len() as i64,
            }
        }
    };
    let c = &img.manifest.config;
    let config = Descriptor {
        media_type: c.media_type.clone(),
        digest: c.digest.clone(),
        size: c.size,
    };
    let layers: Vec<Descriptor> = img
        .layers
        .iter()
        .map(|l| Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
        })
        .collect();
    let size = manifest.size + config.size + layers.iter().map(|l| l.size).sum::<i64>();
    let t = now();
    Ok(ImageRecord {
        name: img.name.clone(),
        target,
        manifest,
        config,
        layers,
        platform: img.platform.to_string(),
        size,
        created_at: t.clone(),
        updated_at: t,
    })
}

/// The stored name for what a user typed: the normalised reference if it parses
/// (`busybox` → `docker.io/library/busybox:latest`), else the text as is.
fn image_name(name: &str) -> String {
    parse_reference(name)
        .map(|r| r.whole())
        .unwrap_or_else(|_| name.to_owned())
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
        tokio::spawn(async move {
            let started = Instant::now();
            let result = async {
                let pulled = puller
                    .pull(&image, &opts)
                    .await
                    .map_err(|e| pull_status(&e))?;
                let rec = record(&d, &pulled).await?;
                d.images
                    .put(&ns, rec.clone())
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok::<_, Status>(rec)
            }
            .await;
            drop(opts);
            match result {
                Ok(rec) => {
                    info!(namespace = %ns, image = %rec.name, digest = %rec.target.digest,
                          elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
                    let _ = tx
                        .send(Ok(pb::PullResponse {
                            event: Some(pb::pull_response::Event::Image(to_pb_image(&rec))),
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
        let images = self.0.images.list(&ns).iter().map(to_pb_image).collect();
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn get(
        &self,
        req: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let rec = self
            .0
            .images
            .get(&ns, &name)
            .or_else(|| self.0.images.get(&ns, &image_name(&name)))
            .ok_or_else(|| Status::not_found(format!("image {name:?} not found")))?;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(to_pb_image(&rec)),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let err = |e: super::images::ImageStoreError| Status::internal(e.to_string());
        let deleted = self.0.images.delete(&ns, &name).map_err(err)?
            || self.0.images.delete(&ns, &image_name(&name)).map_err(err)?;
        if !deleted {
            return Err(Status::not_found(format!("image {name:?} not found")));
        }
        info!(namespace = %ns, image = %name, "image deleted");
        Ok(Response::new(pb::DeleteImageResponse {}))
    }
}

pub struct ContentService(pub Arc<Daemon>);

fn parse_digest(s: &str) -> Result<Digest, Status> {
    Digest::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn to_pb_info(i: &crate::content::Info) -> pb::ContentInfo {
    pb::ContentInfo {
        digest: i.digest.to_string(),
        size: i.size as i64,
        created_at: i.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

const READ_CHUNK: usize = 1 << 20;

#[tonic::async_trait]
impl pb::content_server::Content for ContentService {
    type ReadStream = Stream_<pb::ReadContentResponse>;

    async fn list(
        &self,
        req: Request<pb::ListContentRequest>,
    ) -> Result<Response<pb::ListContentResponse>, Status> {
        namespace(&req)?;
        let info = self.0.store.list().await.map_err(content_status)?;
        Ok(Response::new(pb::ListContentResponse {
            info: info.iter().map(to_pb_info).collect(),
        }))
    }

    async fn info(
        &self,
        req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        namespace(&req)?;
        let digest = parse_digest(&req.into_inner().digest)?;
        let info = self.0.store.info(&digest).await.map_err(content_status)?;
        Ok(Response::new(pb::InfoResponse {
            info: Some(to_pb_info(&info)),
        }))
    }

    async fn read(
        &self,
        req: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        namespace(&req)?;
        let req = req.into_inner();
        let digest = parse_digest(&req.digest)?;
        if req.offset < 0 || req.size < 0 {
            return Err(Status::invalid_argument("negative offset or size"));
        }
        let mut file = self.0.store.reader(&digest).await.map_err(content_status)?;
        let mut offset = req.offset as u64;
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Status::internal(format!("seeking {digest}: {e}")))?;
        }
        let mut left = if req.size == 0 {
            u64::MAX
        } else {
            req.size as u64
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; READ_CHUNK];
            while left > 0 {
                let want = buf.len().min(left.min(usize::MAX as u64) as usize);
                match file.read(&mut buf[..want]).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let msg = pb::ReadContentResponse {
                            offset: offset as i64,
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                        offset += n as u64;
                        left -= n as u64;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("reading {digest}: {e}"))))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<pb::DeleteContentResponse>, Status> {
        namespace(&req)?;
        let digest = parse_digest(&req.into_inner().digest)?;
        self.0.store.delete(&digest).await.map_err(content_status)?;
        info!(%digest, "content deleted");
        Ok(Response::new(pb::DeleteContentResponse {}))
    }
}
