//! The pod and container controller behind the CRI RuntimeService: every pod a VM.
//!
//! - `pod`: RunPodSandbox (with the fallback from a failed warm VM to a fresh boot),
//!   StopPodSandbox, RemovePodSandbox, and what happens when a VM dies;
//! - `launch`: making a pod's VM (record, network, disks, boot, ConfigureGuest) and
//!   undoing it;
//! - `pool` and `warm`: the warm pool's bookkeeping, and the tasks that fill it;
//! - `container`: create (image slot, guest container, log copy), start, stop,
//!   remove, and recording exits (one step for every path that learns of one);
//! - `exec`: `ExecSync`; `stream_exec`: exec sessions of the streaming server;
//! - `port_forward`: forwarded connections of the streaming server;
//! - `recovery`: re-adopting pods after a restart;
//! - `resources`: UpdateContainerResources;
//! - `stats`: pod and container resource use, from the guest;
//! - `figures`: what a metrics scrape reads (pods, containers, warm pools);
//! - `spec`: image config merged with the request;
//! - `state`: the pods and containers in memory; `util`: small helpers.
//!
//! Layers run one way: `mod.rs` (the [`RuntimeBackend`]) over the operations (`pod`,
//! `container`, `exec`, `resources`, `stats`, `figures`, `recovery`) over `launch`
//! and `warm` over `pool`, `state` and `util`; nothing reaches up. VMs come from a
//! [`Hypervisor`] (real processes, or an in-memory fake in the unit tests).
//!
//! Concurrency: the tables (pods, containers, reserved names) sit behind one short
//! lock; each pod has an async operation lock that serialises its lifecycle changes
//! (slot assignment, stop, remove); reads never wait for it.

mod attach;
mod container;
mod deadline;
mod error;
mod exec;
mod figures;
mod handlers;
mod launch;
mod pod;
mod pool;
mod port_forward;
mod recovery;
mod resources;
pub mod security;
pub mod spec;
mod state;
mod stats;
mod stream_exec;
mod template;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fallback;
mod util;
mod warm;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use vmlet_cri::image::BackendError;
use vmlet_cri::runtime::{
    CgroupDriver, ContainerConfig, ContainerEvent, ContainerInfo, ExecOutput, Health, PodConfig,
    PodInfo, PodUsage, ResourcesConfig, RuntimeBackend,
};

pub use error::RuntimeError;
pub use state::Settings;

use crate::images::ImageManager;
use crate::network::pod::{NetworkMode, PodNetworks};
use crate::sandbox::cgroup::Driver;
use crate::sandbox::jail::uids::UidPool;
use crate::sandbox::{Hypervisor, Processes};
use crate::store;
use state::{Inner, Tables};
use util::lock;

/// The runtime: implements the CRI [`RuntimeBackend`].
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Opens the runtime over `images`, re-adopting the pods a previous daemon left.
    pub async fn open(settings: Settings, images: Arc<ImageManager>) -> Result<Self, RuntimeError> {
        Self::open_with(settings, images, Arc::new(Processes)).await
    }

    /// [`Runtime::open`] with pod VMs from `vms`.
    pub async fn open_with(
        settings: Settings,
        images: Arc<ImageManager>,
        vms: Arc<dyn Hypervisor>,
    ) -> Result<Self, RuntimeError> {
        for dir in [
            settings.state_dir.join("pods"),
            settings.runtime_dir.join("pods"),
        ] {
            store::create_private_dir(&dir)?;
        }
        let (events, _) = broadcast::channel(256);
        let rt = Runtime {
            inner: Arc::new(Inner {
                boots: tokio::sync::Semaphore::new(settings.vm.max_concurrent_boots as usize),
                warm: pool::WarmPools::new(settings.handler_names().iter().filter_map(|name| {
                    let h = settings.handler(name).ok()?;
                    Some(pool::WarmPool::new(name, h.warm_pool as usize, h.size))
                })),
                boot_estimate: deadline::BootEstimate::default(),
                templates: template::Templates::new(&settings.state_dir),
                network: PodNetworks::new(settings.network.clone(), &settings.state_dir),
                uids: UidPool::new(
                    settings.state_dir.join("jail-uids"),
                    settings.jail.first_uid,
                    settings.jail.uid_count,
                ),
                settings,
                vms,
                images,
                tables: Mutex::new(Tables::default()),
                events,
                pod_cidr: Mutex::new(String::new()),
                recovery: Mutex::new(Vec::new()),
            }),
        };
        // Off the start path: keying a template may hash the kernel and VMM once.
        let pruning = rt.inner.clone();
        tokio::task::spawn_blocking(move || {
            let (templates, settings) = (&pruning.templates, &pruning.settings);
            templates.prune(|shape| {
                launch::template_key(templates, settings, shape)
                    .ok()
                    .flatten()
            })
        });
        recovery::recover(&rt.inner).await;
        for handler in rt.inner.settings.handler_names() {
            tokio::spawn(warm::refill(rt.inner.clone(), handler));
        }
        Ok(rt)
    }

    /// Runs `cmd` in container `id` for a streaming session; returns its exit code
    /// (128 + N for signal N). Dropping the future kills the process.
    pub async fn exec_streaming(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        streams: vmlet_streaming::ExecStreams,
    ) -> Result<i32, RuntimeError> {
        self.settled_container(id).await;
        stream_exec::exec(&self.inner, id, cmd, tty, streams).await
    }

    /// Attaches a streaming session to running container `id`'s main process until
    /// its output ends or the client detaches.
    pub async fn attach(
        &self,
        id: &str,
        streams: vmlet_streaming::ExecStreams,
    ) -> Result<(), RuntimeError> {
        attach::attach(&self.inner, id, streams).await
    }

    /// Connects `stream` to `port` on the loopback of pod `pod_id`'s VM until both
    /// directions are done.
    pub async fn port_forward<S>(
        &self,
        pod_id: &str,
        port: u16,
        stream: S,
    ) -> Result<(), RuntimeError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.settled_pod(pod_id).await;
        port_forward::forward(&self.inner, pod_id, port, stream).await
    }

    /// Waits until recovery is done with pod `id` (at once if there is no such pod).
    async fn settled_pod(&self, id: &str) {
        if let Ok(p) = self.inner.pod(id) {
            p.settled().await;
        }
    }

    /// Waits until recovery is done with container `id`'s pod.
    async fn settled_container(&self, id: &str) {
        if let Ok(c) = self.inner.container(id) {
            c.pod.settled().await;
        }
    }

    /// Waits until recovery after a restart is done with every pod, including pods
    /// it undoes (for tests and tools; CRI calls wait only for the pods they touch).
    pub async fn recovered(&self) {
        let tasks = std::mem::take(&mut *lock(&self.inner.recovery));
        for t in tasks {
            let _ = t.await;
        }
        let pods: Vec<_> = lock(&self.inner.tables).pods.values().cloned().collect();
        for p in pods {
            p.settled().await;
        }
    }

    /// The figures a metrics scrape reads of the runtime.
    pub async fn scrape(&self) -> crate::metrics::Scraped {
        figures::scrape(&self.inner).await
    }

    /// Before the daemon exits: kills the warm pool's VMs (pods keep running).
    pub async fn shutdown(&self) {
        warm::drain(&self.inner).await;
    }
}

impl RuntimeBackend for Runtime {
    fn health(&self) -> Health {
        let s = &self.inner.settings;
        let missing = [("kernel", &s.kernel), ("initramfs", &s.initramfs)]
            .into_iter()
            .find(|(_, p)| !p.exists());
        let (runtime_ready, runtime_reason, runtime_message) = match missing {
            Some((what, p)) => (
                false,
                "GuestImageMissing".to_owned(),
                format!("the guest {what} {} does not exist", p.display()),
            ),
            None => (true, String::new(), String::new()),
        };
        let (network_ready, network_reason, network_message) = match self.inner.network.mode() {
            NetworkMode::None => (
                false,
                "PodNetworkDisabled".to_owned(),
                "network.mode is \"none\": pods have loopback only".to_owned(),
            ),
            NetworkMode::Cni => match self.inner.network.ready() {
                Ok(_) => (true, String::new(), String::new()),
                Err(e) => (false, "NetworkPluginNotReady".to_owned(), e.to_string()),
            },
        };
        Health {
            runtime_ready,
            runtime_reason,
            runtime_message,
            network_ready,
            network_reason,
            network_message,
            verbose_json: serde_json::json!({
                "warmPool": self.inner.warm.of("").map(|p| p.state()),
                "runtimeHandlers": s.runtimes.keys().map(|name| {
                    let h = s.handler(name).ok();
                    (name.clone(), serde_json::json!({
                        "kernel": h.map(|h| h.kernel),
                        "initramfs": h.map(|h| h.initramfs),
                        "warmPool": self.inner.warm.of(name).map(|p| p.state()),
                    }))
                }).collect::<serde_json::Map<_, _>>(),
                "podCgroups": s.cgroups.root.is_some(),
            })
            .to_string(),
            runtime_handlers: s.handler_names(),
            cgroup_driver: match s.cgroups.driver {
                Driver::Systemd => CgroupDriver::Systemd,
                Driver::Cgroupfs => CgroupDriver::Cgroupfs,
            },
        }
    }

    fn set_pod_cidr(&self, cidr: &str) -> Result<(), BackendError> {
        tracing::info!(cidr, "pod CIDR set");
        *lock(&self.inner.pod_cidr) = cidr.to_owned();
        Ok(())
    }

    async fn run_pod_until(
        &self,
        config: PodConfig,
        deadline: Option<Instant>,
    ) -> Result<String, BackendError> {
        let inner = self.inner.clone();
        // Detached from the request: a caller that goes away (its deadline passed, its
        // connection closed) drops this future, but the start runs to its end, so that
        // a pod that fails is undone (VMM, namespace, records) and one that starts is
        // listed for kubelet to find.
        let start = tokio::spawn(async move {
            pod::run(&inner, config, deadline::Deadline::new(deadline)).await
        });
        match start.await {
            Ok(started) => Ok(started?),
            Err(e) => Err(RuntimeError::Interrupted(format!("RunPodSandbox: {e}")).into()),
        }
    }

    async fn stop_pod(&self, id: &str) -> Result<(), BackendError> {
        self.settled_pod(id).await;
        Ok(pod::stop(&self.inner, id).await?)
    }

    async fn remove_pod(&self, id: &str) -> Result<(), BackendError> {
        self.settled_pod(id).await;
        Ok(pod::remove(&self.inner, id).await?)
    }

    fn pod(&self, id: &str) -> Result<PodInfo, BackendError> {
        Ok(self.inner.pod(id)?.info())
    }

    fn pods(&self) -> Vec<PodInfo> {
        let pods: Vec<_> = lock(&self.inner.tables).pods.values().cloned().collect();
        pods.iter().map(|p| p.info()).collect()
    }

    async fn create_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
    ) -> Result<String, BackendError> {
        self.settled_pod(pod_id).await;
        Ok(container::create(&self.inner, pod_id, config).await?)
    }

    async fn start_container(&self, id: &str) -> Result<(), BackendError> {
        self.settled_container(id).await;
        Ok(container::start(&self.inner, id).await?)
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), BackendError> {
        self.settled_container(id).await;
        let c = self.inner.container(id)?;
        Ok(container::stop_container(&self.inner, &c, timeout).await?)
    }

    async fn remove_container(&self, id: &str) -> Result<(), BackendError> {
        self.settled_container(id).await;
        Ok(container::remove(&self.inner, id).await?)
    }

    fn container(&self, id: &str) -> Result<ContainerInfo, BackendError> {
        Ok(self.inner.container(id)?.info())
    }

    fn containers(&self) -> Vec<ContainerInfo> {
        let all: Vec<_> = lock(&self.inner.tables)
            .containers
            .values()
            .cloned()
            .collect();
        all.iter().map(|c| c.info()).collect()
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, BackendError> {
        self.settled_container(id).await;
        Ok(exec::exec_sync(&self.inner, id, cmd, timeout).await?)
    }

    async fn update_container_resources(
        &self,
        id: &str,
        resources: ResourcesConfig,
    ) -> Result<(), BackendError> {
        self.settled_container(id).await;
        Ok(resources::update(&self.inner, id, resources).await?)
    }

    async fn pod_usage(
        &self,
        pod_id: &str,
        container_ids: Vec<String>,
    ) -> Result<PodUsage, BackendError> {
        self.settled_pod(pod_id).await;
        Ok(stats::pod_usage(&self.inner, pod_id, container_ids).await?)
    }

    async fn reopen_log(&self, id: &str) -> Result<(), BackendError> {
        self.settled_container(id).await;
        let c = self.inner.container(id)?;
        if lock(&c.record).state != vmlet_cri::runtime::ContainerState::Running {
            return Err(RuntimeError::Precondition(format!(
                "container {id} is not running: its log is not open"
            ))
            .into());
        }
        c.sink.lock().await.reopen().map_err(RuntimeError::from)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.inner.events.subscribe()
    }
}
