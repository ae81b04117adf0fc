//! The gRPC RuntimeService over a [`RuntimeBackend`]: each RPC validates and translates
//! through its family's module, then calls the backend.
//!
//! CRI contracts: `RemovePodSandbox` and `RemoveContainer` of an unknown ID succeed
//! (removal is idempotent, as the CRI API requires); every other call on an unknown ID
//! is `NotFound`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::backend::{ContainerInfo, PodInfo, PodState, PodUsage, RuntimeBackend};
use super::events::EventStream;
use super::stats::Rates;
use super::{
    container_create, container_status, container_update, events, exec, metrics, sandbox_run,
    sandbox_status, stats, status, streaming, validate,
};
use crate::image::convert::status as backend_status;
use crate::image::ErrorKind;
use crate::proto;
use crate::proto::runtime_service_server::{RuntimeService, RuntimeServiceServer};

/// The RuntimeService.
pub struct RuntimeServer<B> {
    backend: Arc<B>,
    /// The previous CPU samples, for `usage_nano_cores`.
    rates: Rates,
    /// The streaming server (None: Exec, Attach and PortForward are unimplemented).
    streams: Option<Arc<dyn streaming::StreamUrls>>,
}

impl<B: RuntimeBackend> RuntimeServer<B> {
    /// A service over `backend`.
    pub fn new(backend: Arc<B>) -> Self {
        Self {
            backend,
            rates: Rates::default(),
            streams: None,
        }
    }

    /// Serves Exec, Attach and PortForward with URLs from `streams`.
    pub fn with_streaming(mut self, streams: Arc<dyn streaming::StreamUrls>) -> Self {
        self.streams = Some(streams);
        self
    }

    fn streams(&self, what: &str) -> Result<&dyn streaming::StreamUrls, Status> {
        self.streams.as_deref().ok_or_else(|| {
            Status::unimplemented(format!("{what}: this server has no streaming server"))
        })
    }

    /// The usage of each pod of `wanted` (pod ID → container IDs, all when empty),
    /// asked of their guests at the same time. A pod whose guest fails is left out
    /// with a warning, as containerd leaves out a sandbox it cannot measure: one
    /// broken VM must not hide every other pod from kubelet.
    /// The ready pods `keep` accepts (only they have a VM to measure; containerd too
    /// lists ready sandboxes), the usage of each read now (a pod that could not be read
    /// has none), and every container.
    async fn measured_pods(
        &self,
        keep: impl Fn(&PodInfo) -> bool,
    ) -> (Vec<PodInfo>, HashMap<String, PodUsage>, Vec<ContainerInfo>) {
        let pods: Vec<_> = self
            .backend
            .pods()
            .into_iter()
            .filter(|p| p.state == PodState::Ready && keep(p))
            .collect();
        let usage = self
            .usage_of(pods.iter().map(|p| (p.id.clone(), Vec::new())).collect())
            .await;
        (pods, usage, self.backend.containers())
    }

    async fn usage_of(&self, wanted: HashMap<String, Vec<String>>) -> HashMap<String, PodUsage> {
        let mut calls = tokio::task::JoinSet::new();
        for (pod_id, ids) in wanted {
            let backend = self.backend.clone();
            calls.spawn(async move {
                let r = backend.pod_usage(&pod_id, ids).await;
                (pod_id, r)
            });
        }
        let mut out = HashMap::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((pod_id, Ok(u))) => {
                    out.insert(pod_id, u);
                }
                Ok((pod_id, Err(e))) => {
                    tracing::warn!(pod = %pod_id, "no stats: {}", e.message);
                }
                Err(e) => tracing::error!("stats task failed: {e}"),
            }
        }
        out
    }

    /// Forgets the CPU samples of containers and pods that are gone.
    fn prune_rates(&self) {
        let containers: HashSet<String> = self
            .backend
            .containers()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let pods: HashSet<String> = self.backend.pods().into_iter().map(|p| p.id).collect();
        self.rates.containers.retain(|id| containers.contains(id));
        self.rates.pods.retain(|id| pods.contains(id));
    }

    fn pod_ready(&self, pod_id: &str) -> bool {
        self.backend
            .pod(pod_id)
            .is_ok_and(|p| p.state == PodState::Ready)
    }

    /// The tonic service, ready to add to a server.
    pub fn into_service(self) -> RuntimeServiceServer<Self> {
        RuntimeServiceServer::new(self)
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> Reply<T> {
    Ok(Response::new(t))
}

fn unimplemented<T>(what: &str) -> Reply<T> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented by vmlet yet"
    )))
}

/// Removal of something already gone is success.
fn idempotent(r: Result<(), crate::image::BackendError>) -> Result<(), Status> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(backend_status(e)),
    }
}

#[tonic::async_trait]
impl<B: RuntimeBackend> RuntimeService for RuntimeServer<B> {
    async fn version(&self, _r: Request<proto::VersionRequest>) -> Reply<proto::VersionResponse> {
        ok(status::version())
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<proto::RunPodSandboxRequest>,
    ) -> Reply<proto::RunPodSandboxResponse> {
        // Taken when the request arrives, before any validation.
        let deadline = validate::grpc_timeout(r.metadata()).map(|t| std::time::Instant::now() + t);
        let req = r.into_inner();
        let mut config = sandbox_run::pod_config(req.config)?;
        // The backend knows its handlers and refuses an unknown one.
        config.runtime_handler = validate::runtime_handler(req.runtime_handler)?;
        let id = self
            .backend
            .run_pod_until(config, deadline)
            .await
            .map_err(backend_status)?;
        ok(proto::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<proto::StopPodSandboxRequest>,
    ) -> Reply<proto::StopPodSandboxResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        // Idempotent (api.proto): a pod that is gone is stopped.
        idempotent(self.backend.stop_pod(id).await)?;
        ok(proto::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<proto::RemovePodSandboxRequest>,
    ) -> Reply<proto::RemovePodSandboxResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        idempotent(self.backend.remove_pod(id).await)?;
        ok(proto::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<proto::PodSandboxStatusRequest>,
    ) -> Reply<proto::PodSandboxStatusResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let pod = self.backend.pod(id).map_err(backend_status)?;
        let pod_id = pod.id.clone();
        let (status, info) = sandbox_status::status(pod, req.verbose);
        let containers = self
            .backend
            .containers()
            .into_iter()
            .filter(|c| c.pod_id == pod_id)
            .map(container_status::status)
            .collect();
        ok(proto::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: containers,
            timestamp: validate::now_ns(),
        })
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<proto::ListPodSandboxRequest>,
    ) -> Reply<proto::ListPodSandboxResponse> {
        let filter = r.into_inner().filter.unwrap_or_default();
        let items = self
            .backend
            .pods()
            .into_iter()
            .filter(|p| sandbox_status::matches(p, &filter))
            .map(sandbox_status::summary)
            .collect();
        ok(proto::ListPodSandboxResponse { items })
    }

    async fn create_container(
        &self,
        r: Request<proto::CreateContainerRequest>,
    ) -> Reply<proto::CreateContainerResponse> {
        let req = r.into_inner();
        let pod_id = validate::id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let config = container_create::container_config(req.config)?;
        let id = self
            .backend
            .create_container(pod_id, config)
            .await
            .map_err(backend_status)?;
        ok(proto::CreateContainerResponse { container_id: id })
    }

    async fn start_container(
        &self,
        r: Request<proto::StartContainerRequest>,
    ) -> Reply<proto::StartContainerResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        self.backend
            .start_container(id)
            .await
            .map_err(backend_status)?;
        ok(proto::StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        r: Request<proto::StopContainerRequest>,
    ) -> Reply<proto::StopContainerResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        let timeout = validate::timeout_secs(req.timeout, "timeout")?;
        // Idempotent (api.proto): a container that is gone is stopped.
        idempotent(self.backend.stop_container(id, timeout).await)?;
        ok(proto::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        r: Request<proto::RemoveContainerRequest>,
    ) -> Reply<proto::RemoveContainerResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        idempotent(self.backend.remove_container(id).await)?;
        ok(proto::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        r: Request<proto::ListContainersRequest>,
    ) -> Reply<proto::ListContainersResponse> {
        let filter = r.into_inner().filter.unwrap_or_default();
        let containers = self
            .backend
            .containers()
            .into_iter()
            .filter(|c| container_status::matches(c, &filter))
            .map(container_status::summary)
            .collect();
        ok(proto::ListContainersResponse { containers })
    }

    async fn container_status(
        &self,
        r: Request<proto::ContainerStatusRequest>,
    ) -> Reply<proto::ContainerStatusResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        let c = self.backend.container(id).map_err(backend_status)?;
        let mut info = std::collections::HashMap::new();
        if req.verbose && !c.verbose_json.is_empty() {
            info.insert("info".to_string(), c.verbose_json.clone());
        }
        ok(proto::ContainerStatusResponse {
            status: Some(container_status::status(c)),
            info,
        })
    }

    async fn update_container_resources(
        &self,
        r: Request<proto::UpdateContainerResourcesRequest>,
    ) -> Reply<proto::UpdateContainerResourcesResponse> {
        let req = r.into_inner();
        let (id, resources) = container_update::request(&req)?;
        self.backend
            .update_container_resources(id, resources)
            .await
            .map_err(backend_status)?;
        ok(proto::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        r: Request<proto::ReopenContainerLogRequest>,
    ) -> Reply<proto::ReopenContainerLogResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        self.backend.reopen_log(id).await.map_err(backend_status)?;
        ok(proto::ReopenContainerLogResponse {})
    }

    async fn exec_sync(
        &self,
        r: Request<proto::ExecSyncRequest>,
    ) -> Reply<proto::ExecSyncResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        let (cmd, timeout) = exec::request(&req)?;
        let out = self
            .backend
            .exec_sync(id, cmd, timeout)
            .await
            .map_err(backend_status)?;
        ok(exec::response(out))
    }

    async fn exec(&self, r: Request<proto::ExecRequest>) -> Reply<proto::ExecResponse> {
        let streams = self.streams("Exec")?;
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        let c = self.backend.container(id).map_err(backend_status)?;
        let session = streaming::exec(req, &c)?;
        let url = streams.exec_url(session).map_err(backend_status)?;
        ok(proto::ExecResponse { url })
    }

    async fn attach(&self, r: Request<proto::AttachRequest>) -> Reply<proto::AttachResponse> {
        let streams = self.streams("Attach")?;
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        let c = self.backend.container(id).map_err(backend_status)?;
        let session = streaming::attach(req, &c)?;
        let url = streams.attach_url(session).map_err(backend_status)?;
        ok(proto::AttachResponse { url })
    }

    async fn port_forward(
        &self,
        r: Request<proto::PortForwardRequest>,
    ) -> Reply<proto::PortForwardResponse> {
        let streams = self.streams("PortForward")?;
        let req = r.into_inner();
        let id = validate::id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let pod = self.backend.pod(id).map_err(backend_status)?;
        let session = streaming::port_forward(req, &pod)?;
        let url = streams.port_forward_url(session).map_err(backend_status)?;
        ok(proto::PortForwardResponse { url })
    }

    async fn container_stats(
        &self,
        r: Request<proto::ContainerStatsRequest>,
    ) -> Reply<proto::ContainerStatsResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.container_id, "container_id")?;
        let c = self.backend.container(id).map_err(backend_status)?;
        // A container of a stopped pod gets what the list gives it: its attributes.
        // (containerd fails ContainerStats of a container without a task; the list's
        // shape says more and keeps the two calls consistent.)
        let usage = if self.pod_ready(&c.pod_id) {
            let u = self
                .backend
                .pod_usage(&c.pod_id, vec![c.id.clone()])
                .await
                .map_err(backend_status)?;
            Some(u)
        } else {
            None
        };
        ok(proto::ContainerStatsResponse {
            stats: Some(self.rates.container(&c, usage.as_ref())),
        })
    }

    async fn list_container_stats(
        &self,
        r: Request<proto::ListContainerStatsRequest>,
    ) -> Reply<proto::ListContainerStatsResponse> {
        let filter = r.into_inner().filter.unwrap_or_default();
        self.prune_rates();
        let containers: Vec<ContainerInfo> = self
            .backend
            .containers()
            .into_iter()
            .filter(|c| stats::container_matches(c, &filter))
            .collect();
        let mut wanted: HashMap<String, Vec<String>> = HashMap::new();
        for c in containers.iter().filter(|c| self.pod_ready(&c.pod_id)) {
            wanted
                .entry(c.pod_id.clone())
                .or_default()
                .push(c.id.clone());
        }
        let usage = self.usage_of(wanted).await;
        let stats = containers
            .iter()
            .map(|c| self.rates.container(c, usage.get(&c.pod_id)))
            .collect();
        ok(proto::ListContainerStatsResponse { stats })
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<proto::PodSandboxStatsRequest>,
    ) -> Reply<proto::PodSandboxStatsResponse> {
        let req = r.into_inner();
        let id = validate::id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let pod = self.backend.pod(id).map_err(backend_status)?;
        if pod.state != PodState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready: a stopped pod has no VM to measure",
                pod.id
            )));
        }
        let usage = self
            .backend
            .pod_usage(&pod.id, Vec::new())
            .await
            .map_err(backend_status)?;
        let containers = self
            .backend
            .containers()
            .iter()
            .filter(|c| c.pod_id == pod.id)
            .map(|c| self.rates.container(c, Some(&usage)))
            .collect();
        ok(proto::PodSandboxStatsResponse {
            stats: Some(self.rates.pod(&pod, &usage, containers)),
        })
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<proto::ListPodSandboxStatsRequest>,
    ) -> Reply<proto::ListPodSandboxStatsResponse> {
        let filter = r.into_inner().filter.unwrap_or_default();
        self.prune_rates();
        let (pods, usage, containers) =
            self.measured_pods(|p| stats::pod_matches(p, &filter)).await;
        let stats = pods
            .iter()
            .filter_map(|p| {
                let u = usage.get(&p.id)?;
                let own = containers
                    .iter()
                    .filter(|c| c.pod_id == p.id)
                    .map(|c| self.rates.container(c, Some(u)))
                    .collect();
                Some(self.rates.pod(p, u, own))
            })
            .collect();
        ok(proto::ListPodSandboxStatsResponse { stats })
    }

    async fn update_runtime_config(
        &self,
        r: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Reply<proto::UpdateRuntimeConfigResponse> {
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            self.backend.set_pod_cidr(&cidr).map_err(backend_status)?;
        }
        ok(proto::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, r: Request<proto::StatusRequest>) -> Reply<proto::StatusResponse> {
        ok(status::status(
            self.backend.health(),
            r.into_inner().verbose,
        ))
    }

    async fn checkpoint_container(
        &self,
        _r: Request<proto::CheckpointContainerRequest>,
    ) -> Reply<proto::CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _r: Request<proto::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        ok(events::stream(self.backend.clone()))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<proto::ListMetricDescriptorsRequest>,
    ) -> Reply<proto::ListMetricDescriptorsResponse> {
        ok(proto::ListMetricDescriptorsResponse {
            descriptors: metrics::descriptors(),
        })
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<proto::ListPodSandboxMetricsRequest>,
    ) -> Reply<proto::ListPodSandboxMetricsResponse> {
        let (pods, usage, containers) = self.measured_pods(|_| true).await;
        let pod_metrics = pods
            .iter()
            .filter_map(|p| Some(metrics::pod(p, &containers, usage.get(&p.id)?)))
            .collect();
        ok(proto::ListPodSandboxMetricsResponse { pod_metrics })
    }

    async fn runtime_config(
        &self,
        _r: Request<proto::RuntimeConfigRequest>,
    ) -> Reply<proto::RuntimeConfigResponse> {
        ok(status::runtime_config(self.backend.health().cgroup_driver))
    }
}
