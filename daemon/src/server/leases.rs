//! The Leases service: containerd's leases over the metadata DB's lease records.

use super::service::{blocking, labels_of, metadata_status, namespace, time};
use super::Daemon;
use crate::metadata::LeaseRecord;
use chrono::Utc;
use rcd_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::info;

pub struct LeasesService(pub Arc<Daemon>);

fn pb_lease(l: &LeaseRecord) -> pb::Lease {
    pb::Lease {
        id: l.id.clone(),
        labels: l.labels.clone().into_iter().collect(),
        created_at: time(&l.created),
        expires_at: l.expires.as_ref().map(time).unwrap_or_default(),
        content: l.content.iter().map(|d| d.to_string()).collect(),
        snapshots: l.snapshots.iter().cloned().collect(),
    }
}

#[tonic::async_trait]
impl pb::leases_server::Leases for LeasesService {
    async fn create(
        &self,
        req: Request<pb::CreateLeaseRequest>,
    ) -> Result<Response<pb::CreateLeaseResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let now = Utc::now();
        let expires = if req.expire_seconds == 0 {
            None
        } else {
            let secs = i64::try_from(req.expire_seconds)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .ok_or_else(|| Status::invalid_argument("lease expiry too far away"))?;
            Some(now + secs)
        };
        let lease = LeaseRecord {
            id: if req.id.is_empty() {
                format!("lease-{:016x}", fastrand::u64(..))
            } else {
                req.id
            },
            labels: labels_of(req.labels),
            created: now,
            expires,
            content: Default::default(),
            snapshots: Default::default(),
        };
        let md = self.0.md.clone();
        let l = lease.clone();
        blocking(move || {
            md.write(|tx| tx.create_lease(&ns, &l))
                .map_err(metadata_status)
        })
        .await?;
        info!(lease = %lease.id, "lease created");
        Ok(Response::new(pb::CreateLeaseResponse {
            lease: Some(pb_lease(&lease)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let ns = namespace(&req)?;
        let md = self.0.md.clone();
        let leases =
            blocking(move || md.read(|tx| tx.leases(&ns)).map_err(metadata_status)).await?;
        Ok(Response::new(pb::ListLeasesResponse {
            leases: leases.iter().map(pb_lease).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteLeaseRequest>,
    ) -> Result<Response<pb::DeleteLeaseResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let md = self.0.md.clone();
        let (ns_, id) = (ns.clone(), req.id.clone());
        let found = blocking(move || {
            md.write(|tx| tx.delete_lease(&ns_, &id))
                .map_err(metadata_status)
        })
        .await?;
        if !found {
            return Err(Status::not_found(format!(
                "lease {:?} not found in namespace {ns:?}",
                req.id
            )));
        }
        info!(lease = %req.id, "lease deleted");
        if req.sync {
            crate::gc::collect(&self.0.store, &self.0.snapshotter)
                .await
                .map_err(super::service::gc_status)?;
        }
        Ok(Response::new(pb::DeleteLeaseResponse {}))
    }
}
