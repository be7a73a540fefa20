//! The gRPC services Version and Content, and what every service shares: the namespace of a
//! call, error → status mapping, blocking work off the executor.

use super::Daemon;
use crate::content::{ContentError, Digest};
use crate::gc::GcError;
use crate::image::ImageError;
use crate::metadata::{Labels, MetadataError};
use crate::snapshot::SnapshotError;
use chrono::{DateTime, Utc};
use rcd_proto::v1 as pb;
use rcd_proto::{valid_namespace, DEFAULT_NAMESPACE, NAMESPACE_HEADER};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

pub(super) type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The namespace of a call: the `rcd-namespace` header, else `default`; validated.
pub(super) fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
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

/// RFC 3339, seconds.
pub(super) fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs blocking work (metadata transactions, snapshot directories, mounts) off the executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
}

pub(crate) fn metadata_status(e: MetadataError) -> Status {
    let msg = e.to_string();
    match e {
        MetadataError::InvalidName { .. } | MetadataError::InvalidLabel { .. } => {
            Status::invalid_argument(msg)
        }
        MetadataError::NotFound { .. } => Status::not_found(msg),
        MetadataError::AlreadyExists { .. } => Status::already_exists(msg),
        _ => Status::internal(msg),
    }
}

pub(crate) fn snapshot_status(e: SnapshotError) -> Status {
    let msg = e.to_string();
    match e {
        SnapshotError::Metadata(e) => metadata_status(e),
        SnapshotError::NotFound { .. } => Status::not_found(msg),
        SnapshotError::AlreadyExists { .. } => Status::already_exists(msg),
        SnapshotError::ParentNotCommitted { .. }
        | SnapshotError::NotActive { .. }
        | SnapshotError::HasParent { .. }
        | SnapshotError::HasChildren { .. }
        | SnapshotError::MountOptionsTooLong { .. } => Status::failed_precondition(msg),
        SnapshotError::Io { .. } => Status::internal(msg),
    }
}

pub(crate) fn image_status(e: ImageError) -> Status {
    match e {
        ImageError::Content(e) => content_status(e),
        ImageError::Snapshot(e) => snapshot_status(e),
        ImageError::Metadata(e) => metadata_status(e),
        e => Status::internal(e.to_string()),
    }
}

pub(super) fn gc_status(e: GcError) -> Status {
    Status::internal(e.to_string())
}

pub(super) fn labels_of(map: HashMap<String, String>) -> Labels {
    map.into_iter().collect()
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

pub(super) fn content_status(e: ContentError) -> Status {
    match e {
        ContentError::NotFound(_) => Status::not_found(e.to_string()),
        ContentError::InvalidDigest(_) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
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
        // An image's blob is refused rather than deleted: the image would be left broken.
        // (containerd deletes it and lets the image break; `images rm` + GC is the way here.)
        // The collector's lock keeps a pull from recording an image on it meanwhile.
        let _gc = self.0.md.gc_lock().await;
        let md = self.0.md.clone();
        let users = blocking(move || crate::gc::image_content(&md).map_err(gc_status)).await?;
        if let Some((ns, name)) = users.get(&digest) {
            return Err(Status::failed_precondition(format!(
                "blob {digest} is in use by image {name:?} (namespace {ns:?}): remove the image instead"
            )));
        }
        self.0.store.delete(&digest).await.map_err(content_status)?;
        info!(%digest, "content deleted");
        Ok(Response::new(pb::DeleteContentResponse {}))
    }
}
