//! The Volumes service: named and anonymous volumes ([`crate::netmgr::volumes`]); which
//! containers use one comes from their `rcd.io/volumes` labels.

use super::containers::Runtime;
use super::service::{blocking, metadata_status, namespace};
use crate::netmgr::task::net_status;
use crate::netmgr::volumes::{dir_size, mounts_of, Volume, VolumeMount};
use rcd_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct VolumesService(pub Arc<Runtime>);

/// Volume name -> ids of the containers of `ns` that use it.
fn users(rt: &Runtime, ns: &str) -> Result<BTreeMap<String, Vec<String>>, Status> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in rt.d.md.containers(ns).map_err(metadata_status)? {
        for m in mounts_of(&c.labels) {
            if m.kind != "bind" {
                out.entry(m.source).or_default().push(c.id.clone());
            }
        }
    }
    Ok(out)
}

fn to_pb(v: Volume, used_by: Vec<String>, size: bool) -> pb::Volume {
    pb::Volume {
        size: if size { dir_size(&v.mountpoint) } else { 0 },
        mountpoint: v.mountpoint.display().to_string(),
        name: v.name,
        driver: "local".into(),
        labels: v.meta.labels.into_iter().collect(),
        created_at: v.meta.created_at,
        used_by,
        anonymous: v.meta.anonymous,
    }
}

/// The anonymous volumes of a deleted container (`remove_volumes`) that nobody else uses.
pub(crate) async fn remove_anonymous(rt: &Arc<Runtime>, ns: &str, mounts: &[VolumeMount]) {
    let anon: Vec<String> = mounts
        .iter()
        .filter(|m| m.kind == "anonymous")
        .map(|m| m.source.clone())
        .collect();
    if anon.is_empty() {
        return;
    }
    let (rt, ns) = (rt.clone(), ns.to_owned());
    let _ = blocking(move || {
        let used = users(&rt, &ns)?;
        for v in anon {
            if used.contains_key(&v) {
                continue;
            }
            if let Err(e) = rt.net.volumes.remove(&ns, &v) {
                tracing::warn!(namespace = %ns, volume = %v, "removing an anonymous volume: {e}");
            }
        }
        Ok(())
    })
    .await;
}

#[tonic::async_trait]
impl pb::volumes_server::Volumes for VolumesService {
    async fn create(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        if !matches!(req.driver.as_str(), "" | "local") {
            return Err(Status::invalid_argument(format!(
                "volume driver {:?}: only \"local\"",
                req.driver
            )));
        }
        let rt = self.0.clone();
        let v = blocking(move || {
            let v = rt
                .net
                .volumes
                .create(&ns, &req.name, req.labels.into_iter().collect())
                .map_err(net_status)?;
            let used = users(&rt, &ns)?.remove(&v.name).unwrap_or_default();
            Ok(to_pb(v, used, false))
        })
        .await?;
        Ok(Response::new(pb::CreateVolumeResponse { volume: Some(v) }))
    }

    async fn get(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::GetVolumeResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let rt = self.0.clone();
        let v = blocking(move || {
            let v = rt.net.volumes.get(&ns, &req.name).map_err(net_status)?;
            let used = users(&rt, &ns)?.remove(&v.name).unwrap_or_default();
            Ok(to_pb(v, used, req.size))
        })
        .await?;
        Ok(Response::new(pb::GetVolumeResponse { volume: Some(v) }))
    }

    async fn list(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let ns = namespace(&req)?;
        let size = req.get_ref().size;
        let rt = self.0.clone();
        let volumes = blocking(move || {
            let mut used = users(&rt, &ns)?;
            Ok(rt
                .net
                .volumes
                .list(&ns)
                .map_err(net_status)?
                .into_iter()
                .map(|v| {
                    let u = used.remove(&v.name).unwrap_or_default();
                    to_pb(v, u, size)
                })
                .collect())
        })
        .await?;
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let rt = self.0.clone();
        blocking(move || {
            rt.net.volumes.get(&ns, &name).map_err(net_status)?;
            if let Some(ids) = users(&rt, &ns)?.get(&name) {
                return Err(Status::failed_precondition(format!(
                    "volume {name:?} is in use by container {:?}: remove the container first",
                    ids[0]
                )));
            }
            rt.net.volumes.remove(&ns, &name).map_err(net_status)?;
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneVolumesRequest>,
    ) -> Result<Response<pb::PruneVolumesResponse>, Status> {
        let ns = namespace(&req)?;
        let all = req.get_ref().all;
        let rt = self.0.clone();
        let resp = blocking(move || {
            let used = users(&rt, &ns)?;
            let mut out = pb::PruneVolumesResponse::default();
            for v in rt.net.volumes.list(&ns).map_err(net_status)? {
                if used.contains_key(&v.name) || !(all || v.meta.anonymous) {
                    continue;
                }
                match rt.net.volumes.remove(&ns, &v.name) {
                    Ok(size) => {
                        out.reclaimed_bytes += size;
                        out.deleted.push(v.name);
                    }
                    Err(e) => return Err(net_status(e)),
                }
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(resp))
    }
}
