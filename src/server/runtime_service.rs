//! `runtime.v1.RuntimeService` handlers: validate, call the core, map errors.

use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::unimplemented;
use crate::config::CgroupDriver as Driver;
use crate::runtime::{CRI_API_VERSION, RUNTIME_NAME, Runtime};

type Reply<T> = Result<Response<T>, Status>;

/// Serves the RuntimeService from the shared core.
pub struct RuntimeServiceHandler {
    rt: Arc<Runtime>,
}

impl RuntimeServiceHandler {
    pub fn new(rt: Arc<Runtime>) -> Self {
        RuntimeServiceHandler { rt }
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServiceHandler {
    type GetContainerEventsStream =
        Pin<Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

    async fn version(&self, _: Request<VersionRequest>) -> Reply<VersionResponse> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Reply<StatusResponse> {
        let conditions = self
            .rt
            .conditions()
            .into_iter()
            .map(|c| RuntimeCondition {
                r#type: c.kind.into(),
                status: c.ready,
                reason: c.reason,
                message: c.message,
            })
            .collect();
        let info = if req.get_ref().verbose {
            self.rt.status_info()?
        } else {
            Default::default()
        };
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Reply<RuntimeConfigResponse> {
        let driver = match self.rt.config.runtime.cgroup_driver {
            Driver::Systemd => CgroupDriver::Systemd,
            Driver::Cgroupfs => CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Reply<UpdateRuntimeConfigResponse> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        self.rt.update_pod_cidr(&cidr)?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        unimplemented("GetContainerEvents")
    }

    async fn run_pod_sandbox(
        &self,
        _: Request<RunPodSandboxRequest>,
    ) -> Reply<RunPodSandboxResponse> {
        unimplemented("RunPodSandbox")
    }
    async fn stop_pod_sandbox(
        &self,
        _: Request<StopPodSandboxRequest>,
    ) -> Reply<StopPodSandboxResponse> {
        unimplemented("StopPodSandbox")
    }
    async fn remove_pod_sandbox(
        &self,
        _: Request<RemovePodSandboxRequest>,
    ) -> Reply<RemovePodSandboxResponse> {
        unimplemented("RemovePodSandbox")
    }
    async fn pod_sandbox_status(
        &self,
        _: Request<PodSandboxStatusRequest>,
    ) -> Reply<PodSandboxStatusResponse> {
        unimplemented("PodSandboxStatus")
    }
    async fn list_pod_sandbox(
        &self,
        _: Request<ListPodSandboxRequest>,
    ) -> Reply<ListPodSandboxResponse> {
        unimplemented("ListPodSandbox")
    }
    async fn create_container(
        &self,
        _: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        unimplemented("CreateContainer")
    }
    async fn start_container(
        &self,
        _: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        unimplemented("StartContainer")
    }
    async fn stop_container(
        &self,
        _: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        unimplemented("StopContainer")
    }
    async fn remove_container(
        &self,
        _: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        unimplemented("RemoveContainer")
    }
    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        unimplemented("ListContainers")
    }
    async fn container_status(
        &self,
        _: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        unimplemented("ContainerStatus")
    }
    async fn update_container_resources(
        &self,
        _: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        unimplemented("UpdateContainerResources")
    }
    async fn reopen_container_log(
        &self,
        _: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        unimplemented("ReopenContainerLog")
    }
    async fn exec_sync(&self, _: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        unimplemented("ExecSync")
    }
    async fn exec(&self, _: Request<ExecRequest>) -> Reply<ExecResponse> {
        unimplemented("Exec")
    }
    async fn attach(&self, _: Request<AttachRequest>) -> Reply<AttachResponse> {
        unimplemented("Attach")
    }
    async fn port_forward(&self, _: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        unimplemented("PortForward")
    }
    async fn container_stats(
        &self,
        _: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        unimplemented("ContainerStats")
    }
    async fn list_container_stats(
        &self,
        _: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        unimplemented("ListContainerStats")
    }
    async fn pod_sandbox_stats(
        &self,
        _: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        unimplemented("PodSandboxStats")
    }
    async fn list_pod_sandbox_stats(
        &self,
        _: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        unimplemented("ListPodSandboxStats")
    }
    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }
    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Reply<ListMetricDescriptorsResponse> {
        unimplemented("ListMetricDescriptors")
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        unimplemented("ListPodSandboxMetrics")
    }
}
