//! The Networks service: rnerd's named bridge networks ([`crate::netmgr::NetManager`]).

use super::containers::Runtime;
use super::service::namespace;
use crate::netmgr::{task, NetworkRecord, NetworkRequest};
use rcd_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct NetworksService(pub Arc<Runtime>);

fn to_pb(rt: &Runtime, ns: &str, r: NetworkRecord) -> pb::Network {
    let containers = task::attached(&rt.net, ns, &r.name)
        .into_iter()
        .map(|(id, a)| (id, a.ip))
        .collect();
    pb::Network {
        conflist: serde_json::to_vec(&r.conflist).unwrap_or_default(),
        name: r.name,
        id: r.id,
        driver: "bridge".into(),
        subnet: r.subnet,
        gateway: r.gateway,
        bridge: r.bridge,
        labels: r.labels.into_iter().collect(),
        created_at: r.created_at,
        containers,
    }
}

#[tonic::async_trait]
impl pb::networks_server::Networks for NetworksService {
    async fn create(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        if !matches!(req.driver.as_str(), "" | "bridge") {
            return Err(Status::invalid_argument(format!(
                "network driver {:?}: only \"bridge\"",
                req.driver
            )));
        }
        let rt = &self.0;
        let _g = rt.net.lock.lock().await;
        let rec = rt
            .net
            .create(
                &ns,
                &NetworkRequest {
                    name: req.name,
                    subnet: req.subnet,
                    gateway: req.gateway,
                    labels: req.labels.into_iter().collect(),
                },
            )
            .map_err(task::net_status)?;
        Ok(Response::new(pb::CreateNetworkResponse {
            network: Some(to_pb(rt, &ns, rec)),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::GetNetworkResponse>, Status> {
        let ns = namespace(&req)?;
        let rt = &self.0;
        let rec = {
            let _g = rt.net.lock.lock().await;
            rt.net
                .get(&ns, &req.get_ref().name)
                .map_err(task::net_status)?
        };
        Ok(Response::new(pb::GetNetworkResponse {
            network: Some(to_pb(rt, &ns, rec)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let ns = namespace(&req)?;
        let rt = &self.0;
        let list = {
            let _g = rt.net.lock.lock().await;
            rt.net.list(&ns).map_err(task::net_status)?
        };
        Ok(Response::new(pb::ListNetworksResponse {
            networks: list.into_iter().map(|r| to_pb(rt, &ns, r)).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::DeleteNetworkResponse>, Status> {
        let ns = namespace(&req)?;
        let rt = &self.0;
        let _g = rt.net.lock.lock().await;
        let rec = rt
            .net
            .delete(&ns, &req.get_ref().name)
            .map_err(task::net_status)?;
        tracing::info!(namespace = %ns, network = %rec.name, "network removed");
        Ok(Response::new(pb::DeleteNetworkResponse {}))
    }
}
