//! The tonic services: each RPC calls its group's module.

use super::{container, exec, image, sandbox, stats, Cri, RUNTIME_NAME};
use k8s_cri::v1 as cri;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RuntimeService(pub Arc<Cri>);
pub struct ImageService(pub Arc<Cri>);

type R<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> R<T> {
    Ok(Response::new(t))
}

/// The CRI API version rcd serves.
const API_VERSION: &str = "v1";

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for RuntimeService {
    async fn version(&self, _: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: API_VERSION.into(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        // the pause container's cgroup move waits less (see `task::warm`)
        let _warm = crate::task::warm::hold();
        let id = sandbox::run(&self.0, r.into_inner()).await?;
        ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        sandbox::stop(&self.0, &r.into_inner().pod_sandbox_id).await?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        sandbox::remove(&self.0, &r.into_inner().pod_sandbox_id).await?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        ok(sandbox::status(&self.0, r.into_inner()).await?)
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        ok(cri::ListPodSandboxResponse {
            items: sandbox::list(&self.0, r.into_inner().filter),
        })
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        let id = container::create(&self.0, r.into_inner()).await?;
        ok(cri::CreateContainerResponse { container_id: id })
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        container::start(&self.0, &r.into_inner().container_id).await?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        let r = r.into_inner();
        container::stop(&self.0, &r.container_id, r.timeout).await?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        container::remove(&self.0, &r.into_inner().container_id).await?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        ok(cri::ListContainersResponse {
            containers: container::list(&self.0, r.into_inner().filter),
        })
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        ok(container::status(&self.0, r.into_inner())?)
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        container::update_resources(&self.0, r.into_inner()).await?;
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        container::reopen_log(&self.0, &r.into_inner().container_id).await?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        ok(exec::exec_sync(&self.0, r.into_inner()).await?)
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        ok(cri::ExecResponse {
            url: exec::exec_url(&self.0, r.into_inner())?,
        })
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        ok(cri::AttachResponse {
            url: exec::attach_url(&self.0, r.into_inner())?,
        })
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        ok(cri::PortForwardResponse {
            url: exec::port_forward_url(&self.0, r.into_inner())?,
        })
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        ok(cri::ContainerStatsResponse {
            stats: Some(stats::container(&self.0, &r.into_inner().container_id)?),
        })
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        ok(cri::ListContainerStatsResponse {
            stats: stats::list_containers(&self.0, r.into_inner().filter),
        })
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        ok(cri::PodSandboxStatsResponse {
            stats: Some(stats::pod(&self.0, &r.into_inner().pod_sandbox_id)?),
        })
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        ok(cri::ListPodSandboxStatsResponse {
            stats: stats::list_pods(&self.0, r.into_inner().filter),
        })
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            self.0
                .cni
                .write()
                .await
                .set_pod_cidr(&cidr)
                .map_err(|e| Status::invalid_argument(format!("pod cidr {cidr:?}: {e}")))?;
        }
        ok(cri::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        let verbose = r.into_inner().verbose;
        let net = {
            let mut cni = self.0.cni.write().await;
            // a config dropped in after start is picked up, as kubelet's node readiness waits
            let _ = cni.reload();
            cni.ready()
        };
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            match net {
                Ok(()) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                Err(e) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: format!("network plugin not ready: {e}"),
                },
            },
        ];
        let mut info = std::collections::HashMap::new();
        if verbose {
            info.insert(
                "config".to_owned(),
                serde_json::to_string(&self.0.cfg).unwrap_or_default(),
            );
        }
        ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        })
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "checkpoint container: rcd has no checkpoint/restore support",
        ))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        use tokio_stream::StreamExt;
        let rx = self.0.events.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| e.ok().map(Ok));
        ok(Box::pin(s))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        ok(cri::ListMetricDescriptorsResponse::default())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        ok(cri::ListPodSandboxMetricsResponse::default())
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        ok(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        })
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageService {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        let filter = r
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .unwrap_or_default();
        let mut images = image::list(&self.0).await?;
        if !filter.is_empty() {
            if let Ok(Some(id)) = image::status(
                &self.0,
                cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: filter.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                },
            )
            .await
            .map(|s| s.image.map(|i| i.id))
            {
                images.retain(|i| i.id == id);
            } else {
                // crictl users type short names (`crictl images busybox`): match them against
                // the repositories' trailing path components, as CRI-O's short names do
                images.retain(|i| {
                    i.repo_tags
                        .iter()
                        .chain(&i.repo_digests)
                        .any(|r| image::short_name_matches(r, &filter))
                });
            }
        }
        ok(cri::ListImagesResponse { images })
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        ok(image::status(&self.0, r.into_inner()).await?)
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        ok(cri::PullImageResponse {
            image_ref: image::pull(&self.0, r.into_inner()).await?,
        })
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        image::remove(&self.0, r.into_inner()).await?;
        ok(cri::RemoveImageResponse {})
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        ok(image::fs_info(&self.0).await?)
    }
}
