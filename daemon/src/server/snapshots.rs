//! The Snapshots service: the namespace's overlayfs snapshots, as containerd's snapshots API.

use super::images::{LABEL_MOUNT_IMAGE, LABEL_MOUNT_TARGET};
use super::service::{blocking, labels_of, namespace, snapshot_status, time};
use super::Daemon;
use crate::snapshot::{Info, Mount, SnapshotError};
use rcd_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::info;

pub struct SnapshotsService(pub Arc<Daemon>);

pub(super) fn pb_mount(m: &Mount) -> pb::Mount {
    pb::Mount {
        r#type: m.kind.clone(),
        source: m.source.clone(),
        options: m.options.clone(),
    }
}

fn pb_snapshot(i: &Info, usage: Option<crate::snapshot::Usage>) -> pb::Snapshot {
    let (size, inodes) = match (usage, i.size, i.inodes) {
        (Some(u), _, _) => (u.size as i64, u.inodes as i64),
        (None, Some(s), Some(n)) => (s as i64, n as i64),
        _ => (-1, -1),
    };
    pb::Snapshot {
        key: i.key.clone(),
        parent: i.parent.clone().unwrap_or_default(),
        kind: i.kind.to_string(),
        labels: i.labels.clone().into_iter().collect(),
        created_at: time(&i.created),
        updated_at: time(&i.updated),
        size,
        inodes,
    }
}

fn key_arg(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("snapshot key is empty"));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotsService {
    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let ns = namespace(&req)?;
        let s = self.0.snapshotter.clone();
        let list = blocking(move || s.list(&ns).map_err(snapshot_status)).await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: list.iter().map(|i| pb_snapshot(i, None)).collect(),
        }))
    }

    async fn info(
        &self,
        req: Request<pb::SnapshotInfoRequest>,
    ) -> Result<Response<pb::SnapshotInfoResponse>, Status> {
        let ns = namespace(&req)?;
        let key = req.into_inner().key;
        key_arg(&key)?;
        let s = self.0.snapshotter.clone();
        let snap = blocking(move || {
            let info = s.stat(&ns, &key).map_err(snapshot_status)?;
            let usage = s.usage(&ns, &key).map_err(snapshot_status)?;
            Ok(pb_snapshot(&info, Some(usage)))
        })
        .await?;
        Ok(Response::new(pb::SnapshotInfoResponse {
            snapshot: Some(snap),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::SnapshotMountsRequest>,
    ) -> Result<Response<pb::SnapshotMountsResponse>, Status> {
        let ns = namespace(&req)?;
        let key = req.into_inner().key;
        key_arg(&key)?;
        let s = self.0.snapshotter.clone();
        let mounts = blocking(move || {
            let info = s.stat(&ns, &key).map_err(snapshot_status)?;
            if info.kind == crate::metadata::SnapshotKind::Committed {
                return Err(Status::failed_precondition(format!(
                    "snapshot {key:?} is committed: only active snapshots and views have mounts (make one on it with prepare or view)"
                )));
            }
            s.mounts(&ns, &key).map_err(snapshot_status)
        })
        .await?;
        Ok(Response::new(pb::SnapshotMountsResponse {
            mounts: mounts.iter().map(pb_mount).collect(),
        }))
    }

    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotMountsResponse>, Status> {
        self.create(req, false).await
    }

    async fn view(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotMountsResponse>, Status> {
        self.create(req, true).await
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<pb::CommitSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        key_arg(&req.key)?;
        key_arg(&req.name)?;
        let s = self.0.snapshotter.clone();
        let labels = labels_of(req.labels);
        let (name, key) = (req.name, req.key);
        blocking(move || {
            if let Ok(i) = s.stat(&ns, &key) {
                if i.labels.contains_key(LABEL_MOUNT_TARGET) {
                    return Err(Status::failed_precondition(format!(
                        "snapshot {key:?} is an image mount: unmount it instead (rctr images unmount {key})"
                    )));
                }
            }
            s.commit(&ns, &name, &key, labels).map_err(snapshot_status)?;
            info!(namespace = %ns, %key, %name, "snapshot committed");
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::CommitSnapshotResponse {}))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<pb::RemoveSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let key = req.into_inner().key;
        key_arg(&key)?;
        let d = self.0.clone();
        blocking(move || {
            let s = &d.snapshotter;
            let info = s.stat(&ns, &key).map_err(snapshot_status)?;
            if let Some(target) = info.labels.get(LABEL_MOUNT_TARGET) {
                let image = info.labels.get(LABEL_MOUNT_IMAGE).cloned().unwrap_or_default();
                return Err(Status::failed_precondition(format!(
                    "snapshot {key:?} is the mount of image {image:?} at {target}: unmount it instead (rctr images unmount {target})"
                )));
            }
            if s.is_held(&ns, &key) {
                return Err(Status::failed_precondition(format!(
                    "snapshot {key:?} is in use by an unpack in progress"
                )));
            }
            let users = crate::gc::image_snapshots(&d.md, &ns).map_err(super::service::gc_status)?;
            if let Some(image) = users.get(&key) {
                return Err(Status::failed_precondition(format!(
                    "snapshot {key:?} is part of the rootfs of image {image:?}: remove the image instead"
                )));
            }
            s.remove(&ns, &key).map_err(|e| match e {
                SnapshotError::HasChildren { key, child } => Status::failed_precondition(format!(
                    "snapshot {key:?} has children ({child:?}): remove them first"
                )),
                e => snapshot_status(e),
            })?;
            info!(namespace = %ns, %key, "snapshot removed");
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RemoveSnapshotResponse {}))
    }
}

impl SnapshotsService {
    async fn create(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
        view: bool,
    ) -> Result<Response<pb::SnapshotMountsResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        key_arg(&req.key)?;
        let s = self.0.snapshotter.clone();
        let labels = labels_of(req.labels);
        let (key, parent) = (req.key, req.parent);
        let mounts = blocking(move || {
            let parent = (!parent.is_empty()).then_some(parent.as_str());
            let m = if view {
                s.view(&ns, &key, parent, labels)
            } else {
                s.prepare(&ns, &key, parent, labels)
            }
            .map_err(snapshot_status)?;
            info!(namespace = %ns, %key, ?parent, view, "snapshot created");
            Ok(m)
        })
        .await?;
        Ok(Response::new(pb::SnapshotMountsResponse {
            mounts: mounts.iter().map(pb_mount).collect(),
        }))
    }
}
