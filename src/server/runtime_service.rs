//! `runtime.v1.RuntimeService` handlers: validate, call the core, map errors.

use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::encoded_list::{EncodedContainers, EncodedList};
use super::unimplemented;
use super::validate;
use crate::runtime::{
    CRI_API_VERSION, CgroupDriver as Driver, ContainerFilter as CoreContainerFilter,
    ContainerRecord, ContainerView, PodFilter, PodRecord, PodState, RUNTIME_NAME, Runtime,
    cri_signal,
};

/// Runs a pod operation to the end even if the client gives up (deadline,
/// disconnect): its retry then finds the finished work instead of a
/// half-made pod.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> Result<T, Status> {
    use tracing::Instrument;
    tokio::spawn(op.instrument(tracing::Span::current()))
        .await
        .map_err(|e| Status::internal(format!("pod operation failed: {e}")))?
        .map_err(Status::from)
}

fn pod_state(s: PodState) -> i32 {
    match s {
        PodState::Ready => PodSandboxState::SandboxReady as i32,
        PodState::NotReady => PodSandboxState::SandboxNotready as i32,
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// Serves the RuntimeService from the shared core.
pub struct RuntimeServiceHandler {
    rt: Arc<Runtime>,
    /// ListContainers' entries, encoded (see `encoded_list.rs`).
    encoded: EncodedContainers,
}

impl RuntimeServiceHandler {
    pub fn new(rt: Arc<Runtime>) -> Self {
        RuntimeServiceHandler {
            rt,
            encoded: EncodedContainers::default(),
        }
    }

    /// The containers a ListContainers request asks for, and whether it
    /// asks for all of them.
    fn listed(&self, req: ListContainersRequest) -> Result<(Vec<ContainerView>, bool), Status> {
        let filter = req.filter.unwrap_or_default();
        validate::id("container id filter", &filter.id)?;
        validate::id("pod sandbox id filter", &filter.pod_sandbox_id)?;
        let state = match filter.state.map(|s| container_state(s.state)) {
            None => None,
            Some(Some(s)) => Some(s),
            Some(None) => return Err(Status::invalid_argument("unknown container state")),
        };
        let filter = CoreContainerFilter {
            id: filter.id,
            pod: filter.pod_sandbox_id,
            state,
            labels: filter.label_selector,
        };
        let all = filter.id.is_empty()
            && filter.pod.is_empty()
            && filter.state.is_none()
            && filter.labels.is_empty();
        Ok((self.rt.list_containers(&filter)?, all))
    }

    /// ListContainers, as served: from the cached encodings.
    pub(super) fn list_encoded(&self, req: ListContainersRequest) -> Result<EncodedList, Status> {
        let (views, all) = self.listed(req)?;
        Ok(self.encoded.answer(views, all))
    }
}

/// The CRI checks for Exec and Attach (texts as upstream's streaming
/// server), before the core is asked for a URL.
fn stream_checks(
    container_id: &str,
    (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
    conjunction: &str,
) -> Result<(), Status> {
    if container_id.is_empty() {
        return Err(Status::invalid_argument("missing required container_id"));
    }
    validate::id("container id", container_id)?;
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(format!(
            "one of stdin, stdout, {conjunction} stderr must be set"
        )));
    }
    Ok(())
}

fn container_state(s: i32) -> Option<k8s_cri::v1::ContainerState> {
    k8s_cri::v1::ContainerState::try_from(s).ok()
}

/// A container as ListContainers shows it.
pub(super) fn listed_container(v: ContainerView) -> Container {
    let c = &v.record;
    Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: c.config.metadata.clone(),
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        state: v.run.state as i32,
        created_at: c.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

/// A container's mounts as ContainerStatus reports them: as requested, an
/// image volume's with the image's id as its `image_ref`.
fn reported_mounts(c: &ContainerRecord) -> Vec<Mount> {
    let mut mounts = c.config.mounts.clone();
    for v in &c.image_volumes {
        if let Some(image) = mounts.get_mut(v.mount).and_then(|m| m.image.as_mut()) {
            image.image_ref = v.image_id.clone();
        }
    }
    mounts
}

/// A container's status message (ContainerStatus, GetContainerEvents).
fn container_status_message(st: &crate::runtime::ContainerStatus) -> ContainerStatus {
    let (c, run) = (&st.view.record, &st.view.run);
    ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: run.state as i32,
        created_at: c.created_at,
        started_at: run.started_at,
        finished_at: st.finished_at,
        exit_code: st.exit_code,
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        reason: st.reason.into(),
        message: st.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: reported_mounts(c),
        log_path: c.log_path.clone(),
        resources: Some(ContainerResources {
            linux: c.resources.clone(),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        user: Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: c.uid as i64,
                gid: c.gid as i64,
                supplemental_groups: c.additional_gids.iter().map(|g| *g as i64).collect(),
            }),
        }),
        stop_signal: cri_signal(c.stop_signal) as i32,
    }
}

/// A pod's status message (PodSandboxStatus, GetContainerEvents).
fn pod_status_message(pod: &PodRecord) -> PodSandboxStatus {
    let ns_opts = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let mut ips = pod.ips.iter();
    PodSandboxStatus {
        id: pod.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: pod_state(pod.state),
        created_at: pod.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace { options: ns_opts }),
        }),
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

/// A pod as ListPodSandbox shows it.
fn listed_pod(p: &PodRecord) -> PodSandbox {
    PodSandbox {
        id: p.id.clone(),
        metadata: p.config.metadata.clone(),
        state: pod_state(p.state),
        created_at: p.created_at,
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServiceHandler {
    type GetContainerEventsStream =
        Pin<Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;
    type StreamPodSandboxesStream = super::Chunks<StreamPodSandboxesResponse>;
    type StreamContainersStream = super::Chunks<StreamContainersResponse>;
    type StreamContainerStatsStream = super::Chunks<StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = super::Chunks<StreamPodSandboxStatsResponse>;
    type StreamPodSandboxMetricsStream = super::Chunks<StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<StreamPodSandboxesRequest>,
    ) -> Reply<Self::StreamPodSandboxesStream> {
        let filter = req.into_inner().filter;
        let items = self
            .list_pod_sandbox(Request::new(ListPodSandboxRequest { filter }))
            .await?
            .into_inner()
            .items;
        Ok(super::chunked(items, |pod_sandboxes| {
            StreamPodSandboxesResponse { pod_sandboxes }
        }))
    }

    async fn stream_containers(
        &self,
        req: Request<StreamContainersRequest>,
    ) -> Reply<Self::StreamContainersStream> {
        let filter = req.into_inner().filter;
        let (views, _) = self.listed(ListContainersRequest { filter })?;
        let items = views.into_iter().map(listed_container).collect();
        Ok(super::chunked(items, |containers| {
            StreamContainersResponse { containers }
        }))
    }

    async fn stream_container_stats(
        &self,
        req: Request<StreamContainerStatsRequest>,
    ) -> Reply<Self::StreamContainerStatsStream> {
        let filter = req.into_inner().filter;
        let stats = self
            .list_container_stats(Request::new(ListContainerStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(super::chunked(stats, |container_stats| {
            StreamContainerStatsResponse { container_stats }
        }))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<StreamPodSandboxStatsRequest>,
    ) -> Reply<Self::StreamPodSandboxStatsStream> {
        let filter = req.into_inner().filter;
        let stats = self
            .list_pod_sandbox_stats(Request::new(ListPodSandboxStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(super::chunked(stats, |pod_sandbox_stats| {
            StreamPodSandboxStatsResponse { pod_sandbox_stats }
        }))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<StreamPodSandboxMetricsRequest>,
    ) -> Reply<Self::StreamPodSandboxMetricsStream> {
        let metrics = self
            .list_pod_sandbox_metrics(Request::new(ListPodSandboxMetricsRequest {}))
            .await?
            .into_inner()
            .pod_metrics;
        Ok(super::chunked(metrics, |pod_sandbox_metrics| {
            StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        }))
    }

    #[tracing::instrument(skip_all, fields(pod_sandbox_id = %req.get_ref().pod_sandbox_id))]
    async fn update_pod_sandbox_resources(
        &self,
        req: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Reply<UpdatePodSandboxResourcesResponse> {
        let req = req.into_inner();
        validate::id("pod sandbox id", &req.pod_sandbox_id)?;
        for r in [&req.resources, &req.overhead].into_iter().flatten() {
            validate::resources(r)?;
        }
        self.rt
            .update_pod_resources(&req.pod_sandbox_id, req.resources, req.overhead)
            .await?;
        Ok(Response::new(UpdatePodSandboxResourcesResponse {}))
    }

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
        let features = self.rt.features();
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: features
                .handlers
                .into_iter()
                .map(|h| RuntimeHandler {
                    name: h.name,
                    features: Some(RuntimeHandlerFeatures {
                        recursive_read_only_mounts: h.recursive_read_only_mounts,
                        user_namespaces: h.user_namespaces,
                    }),
                })
                .collect(),
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: features.supplemental_groups_policy,
                user_namespaces_host_network: features.user_namespaces_host_network,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Reply<RuntimeConfigResponse> {
        let driver = match self.rt.cgroup_driver() {
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
        validate::pod_cidr(&cidr)?;
        self.rt.update_pod_cidr(&cidr)?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    #[tracing::instrument(skip_all, fields(pod = ?req.get_ref().config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| format!("{}/{}", m.namespace, m.name))))]
    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Reply<RunPodSandboxResponse> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("pod sandbox config is required"))?;
        validate::pod_config(&config)?;
        if !req.runtime_handler.is_empty() {
            validate::name("runtime handler", &req.runtime_handler)?;
        }
        let rt = self.rt.clone();
        let handler = req.runtime_handler;
        let id = detached(async move { rt.run_pod(config, &handler).await }).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %req.get_ref().pod_sandbox_id))]
    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Reply<StopPodSandboxResponse> {
        let (rt, id) = (self.rt.clone(), req.into_inner().pod_sandbox_id);
        validate::id("pod sandbox id", &id)?;
        detached(async move { rt.stop_pod(&id).await }).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %req.get_ref().pod_sandbox_id))]
    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Reply<RemovePodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("pod sandbox id is empty"));
        }
        validate::id("pod sandbox id", &id)?;
        let rt = self.rt.clone();
        detached(async move { rt.remove_pod(&id).await }).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %req.get_ref().pod_sandbox_id))]
    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Reply<PodSandboxStatusResponse> {
        let req = req.into_inner();
        validate::id("pod sandbox id", &req.pod_sandbox_id)?;
        let status = self.rt.pod_status(&req.pod_sandbox_id, req.verbose).await?;
        let pod = status.record;
        let mut info = std::collections::HashMap::new();
        if let Some(d) = status.verbose {
            let check = match d.network_check {
                None => serde_json::Value::Null,
                Some(Ok(())) => "ok".into(),
                Some(Err(e)) => e.into(),
            };
            let v = serde_json::json!({
                "networkCheck": check,
                "pid": pod.init_pid.unwrap_or(0),
                "netns": d.netns,
                "network": pod.network,
                "config": pod.config,
                "runtimeHandler": pod.runtime_handler,
            });
            info.insert("info".to_string(), v.to_string());
        }
        let status = pod_status_message(&pod);
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(status),
            info,
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Reply<ListPodSandboxResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        validate::id("pod sandbox id filter", &filter.id)?;
        let state = match filter.state.map(|s| PodSandboxState::try_from(s.state)) {
            None => None,
            Some(Ok(PodSandboxState::SandboxReady)) => Some(PodState::Ready),
            Some(Ok(PodSandboxState::SandboxNotready)) => Some(PodState::NotReady),
            Some(Err(_)) => return Err(Status::invalid_argument("unknown pod sandbox state")),
        };
        let items = self
            .rt
            .list_pods(&PodFilter {
                id: filter.id,
                state,
                labels: filter.label_selector,
            })?
            .iter()
            .map(|p| listed_pod(p))
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        use futures::StreamExt;
        let events = self.rt.container_events().map(|ev| {
            let ev = ev?;
            Ok(ContainerEventResponse {
                container_id: ev.id,
                container_event_type: ev.kind as i32,
                created_at: ev.at,
                pod_sandbox_status: ev.pod.as_deref().map(pod_status_message),
                containers_statuses: ev.containers.iter().map(container_status_message).collect(),
            })
        });
        Ok(Response::new(Box::pin(events)))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %req.get_ref().pod_sandbox_id, name = ?req.get_ref().config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| &m.name)))]
    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        validate::id("pod sandbox id", &req.pod_sandbox_id)?;
        validate::container_config(&config)?;
        if let Some(p) = &req.sandbox_config {
            validate::pod_config(p)?;
        }
        let rt = self.rt.clone();
        let id = detached(async move {
            rt.create_container(&req.pod_sandbox_id, config, req.sandbox_config)
                .await
        })
        .await?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        let (rt, id) = (self.rt.clone(), req.into_inner().container_id);
        validate::id("container id", &id)?;
        detached(async move { rt.start_container(&id).await }).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        let req = req.into_inner();
        validate::id("container id", &req.container_id)?;
        let timeout = validate::timeout("stop timeout", req.timeout)?;
        let rt = self.rt.clone();
        detached(async move { rt.stop_container(&req.container_id, timeout).await }).await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        let (rt, id) = (self.rt.clone(), req.into_inner().container_id);
        if id.is_empty() {
            return Err(Status::invalid_argument("container id is empty"));
        }
        validate::id("container id", &id)?;
        detached(async move { rt.remove_container(&id).await }).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        // Served by `encoded_list` in front of this service; kept for
        // callers of the trait itself.
        let (views, _) = self.listed(req.into_inner())?;
        let containers = views.into_iter().map(listed_container).collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        let req = req.into_inner();
        validate::id("container id", &req.container_id)?;
        let st = self
            .rt
            .container_status(&req.container_id, req.verbose)
            .await?;
        let (c, run) = (&st.view.record, &st.view.run);
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": run.pid.unwrap_or(0),
                "sandboxID": c.pod_id,
                "runtimeSpec": st.spec.clone().unwrap_or_default(),
            });
            info.insert("info".to_string(), v.to_string());
        }
        let status = container_status_message(&st);
        Ok(Response::new(ContainerStatusResponse {
            status: Some(status),
            info,
        }))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        validate::id("container id", &req.container_id)?;
        let linux = req.linux.unwrap_or_default();
        validate::resources(&linux)?;
        self.rt
            .update_container_resources(&req.container_id, linux)
            .await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        let id = req.into_inner().container_id;
        validate::id("container id", &id)?;
        self.rt.reopen_container_log(&id).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn exec_sync(&self, req: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        let req = req.into_inner();
        validate::id("container id", &req.container_id)?;
        validate::command(&req.cmd)?;
        let timeout = validate::timeout("exec timeout", req.timeout)?;
        let out = self
            .rt
            .exec_sync(&req.container_id, req.cmd, timeout)
            .await?;
        Ok(Response::new(ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }
    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn exec(&self, req: Request<ExecRequest>) -> Reply<ExecResponse> {
        let req = req.into_inner();
        if !req.container_id.is_empty() {
            validate::command(&req.cmd)?;
        }
        stream_checks(
            &req.container_id,
            (req.stdin, req.stdout, req.stderr, req.tty),
            "or",
        )?;
        let url = self.rt.exec_url(req)?;
        Ok(Response::new(ExecResponse { url }))
    }

    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn attach(&self, req: Request<AttachRequest>) -> Reply<AttachResponse> {
        let req = req.into_inner();
        stream_checks(
            &req.container_id,
            (req.stdin, req.stdout, req.stderr, req.tty),
            "and",
        )?;
        let url = self.rt.attach_url(req)?;
        Ok(Response::new(AttachResponse { url }))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %req.get_ref().pod_sandbox_id))]
    async fn port_forward(&self, req: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        let req = req.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("missing required pod_sandbox_id"));
        }
        validate::id("pod sandbox id", &req.pod_sandbox_id)?;
        if req.port.iter().any(|p| !(1..=65535).contains(p)) {
            return Err(Status::invalid_argument("port out of range"));
        }
        let url = self.rt.port_forward_url(req)?;
        Ok(Response::new(PortForwardResponse { url }))
    }
    #[tracing::instrument(skip_all, fields(container_id = %req.get_ref().container_id))]
    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        let id = req.into_inner().container_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("container id is empty"));
        }
        validate::id("container id", &id)?;
        let view = self.rt.container_stats(&id).await?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(super::stats::container(&view)),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        validate::id("container id filter", &filter.id)?;
        validate::id("pod sandbox id filter", &filter.pod_sandbox_id)?;
        let views = self
            .rt
            .list_container_stats(&CoreContainerFilter {
                id: filter.id,
                pod: filter.pod_sandbox_id,
                state: None,
                labels: filter.label_selector,
            })
            .await?;
        Ok(Response::new(ListContainerStatsResponse {
            stats: views.iter().map(super::stats::container).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %req.get_ref().pod_sandbox_id))]
    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        let id = req.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("pod sandbox id is empty"));
        }
        validate::id("pod sandbox id", &id)?;
        let view = self.rt.pod_stats(&id).await?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(super::stats::pod(&view)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        validate::id("pod sandbox id filter", &filter.id)?;
        let views = self
            .rt
            .list_pod_stats(&PodFilter {
                id: filter.id,
                state: None,
                labels: filter.label_selector,
            })
            .await?;
        Ok(Response::new(ListPodSandboxStatsResponse {
            stats: views.iter().map(super::stats::pod).collect(),
        }))
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
        let descriptors = self
            .rt
            .metric_descriptors()
            .iter()
            .map(super::stats::descriptor)
            .collect();
        Ok(Response::new(ListMetricDescriptorsResponse { descriptors }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        let pods = self.rt.list_pod_metrics().await?;
        Ok(Response::new(ListPodSandboxMetricsResponse {
            pod_metrics: pods.iter().map(super::stats::pod_metrics).collect(),
        }))
    }
}
