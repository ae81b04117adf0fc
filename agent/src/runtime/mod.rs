//! The pod and container controller behind the CRI RuntimeService: every pod a VM.
//!
//! - `pod`: RunPodSandbox, StopPodSandbox, RemovePodSandbox, and what happens when
//!   a VM dies;
//! - `container`: create (image slot, guest container, log copy), start, stop,
//!   remove, and exit tracking;
//! - `exec`: `ExecSync`;
//! - `recovery`: re-adopting pods after a restart;
//! - `resources`: UpdateContainerResources;
//! - `stats`: pod and container resource use, from the guest;
//! - `spec`: image config merged with the request.
//!
//! Concurrency: the tables (pods, containers, reserved names) sit behind one short
//! lock; each pod has an async operation lock that serialises its lifecycle changes
//! (slot assignment, stop, remove); reads never wait for it.

mod container;
mod error;
mod exec;
mod launch;
mod pod;
mod recovery;
mod resources;
pub mod spec;
mod stats;
#[cfg(test)]
mod tests;
mod warm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use vmlet_cri::image::BackendError;
use vmlet_cri::runtime::{
    ContainerConfig, ContainerEvent, ContainerInfo, EventKind, ExecOutput, Health, PodConfig,
    PodInfo, PodMetadata, PodState, PodUsage, ResourcesConfig, RuntimeBackend,
};

pub use error::RuntimeError;

use crate::config::VmConfig;
use crate::images::{ImageLease, ImageManager};
use crate::logs::SharedSink;
use crate::network::pod::{NetworkMode, NetworkSettings, PodNetworks};
use crate::sandbox::{Hypervisor, Processes, Vm};
use crate::store::{self, ContainerRecord, PodPaths, PodPhase, PodRecord};

/// What the runtime needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// vmlet-vmm.
    pub vmm: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// Persistent state.
    pub state_dir: PathBuf,
    /// Sockets.
    pub runtime_dir: PathBuf,
    /// VM defaults.
    pub vm: VmConfig,
    /// Pod networking.
    pub network: NetworkSettings,
}

/// A pod in memory.
struct Pod {
    id: String,
    paths: PodPaths,
    record: Mutex<PodRecord>,
    vm: Mutex<Option<Vm>>,
    /// Serialises lifecycle changes of the pod and its containers.
    op: tokio::sync::Mutex<()>,
}

/// A container in memory.
struct Container {
    id: String,
    pod: Arc<Pod>,
    record: Mutex<ContainerRecord>,
    _lease: Option<ImageLease>,
    sink: SharedSink,
    log_task: Mutex<Option<JoinHandle<()>>>,
    exit_task: Mutex<Option<JoinHandle<()>>>,
    /// True once the log copy has ended (everything copied, or it failed).
    log_done: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Tables {
    pods: HashMap<String, Arc<Pod>>,
    containers: HashMap<String, Arc<Container>>,
    pod_names: HashMap<PodMetadata, String>,
    container_names: HashMap<(String, String, u32), String>,
}

struct Inner {
    settings: Settings,
    /// Starts and finds the pods' VMs.
    vms: Arc<dyn Hypervisor>,
    /// Permits to boot a guest (`vm.max_concurrent_boots`).
    boots: tokio::sync::Semaphore,
    /// Pre-booted VMs (`vm.warm_pool`).
    warm: warm::WarmPool,
    network: PodNetworks,
    images: Arc<ImageManager>,
    tables: Mutex<Tables>,
    events: broadcast::Sender<ContainerEvent>,
    pod_cidr: Mutex<String>,
}

/// The runtime: implements the CRI [`RuntimeBackend`].
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

/// Lines of `vmm.log` and `console.log` that verbose PodSandboxStatus shows of a pod
/// whose VM died.
const EXIT_TAIL_LINES: usize = 20;

/// Locks a std mutex, carrying on after a panic elsewhere (the data is plain state,
/// valid between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh 64-hex ID.
fn new_id() -> Result<String, RuntimeError> {
    let mut buf = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| {
            RuntimeError::Store(store::StoreError::Io {
                op: "read",
                path: "/dev/urandom".into(),
                source,
            })
        })?;
    Ok(hex::encode(buf))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn pod_name(m: &PodMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

impl Pod {
    fn save(&self) -> Result<(), RuntimeError> {
        let rec = lock(&self.record).clone();
        store::write_json(&self.paths.record(), &rec)?;
        Ok(())
    }

    fn vm(&self) -> Option<Vm> {
        lock(&self.vm).clone()
    }

    fn info(&self) -> PodInfo {
        let r = lock(&self.record);
        // Why the VM went, with the last words of the VMM and of the guest console.
        let (vmm_tail, console_tail) = match &r.vm_exit {
            Some(_) => (
                crate::sandbox::tail(&self.paths.vmm_log(), EXIT_TAIL_LINES),
                crate::sandbox::tail(&self.paths.console(), EXIT_TAIL_LINES),
            ),
            None => (String::new(), String::new()),
        };
        let verbose = serde_json::json!({
            "vcpus": r.vcpus,
            "memMib": r.mem_mib,
            "vmmPid": r.vmm_pid,
            "phase": r.phase,
            "vmExit": r.vm_exit,
            "vmmLogTail": vmm_tail,
            "consoleTail": console_tail,
            "slots": r.slots,
            "dir": self.paths.dir,
            "console": self.paths.console(),
            "netns": r.network.as_ref().map(|n| &n.netns),
            "cniResult": r.network.as_ref().and_then(|n| n.result.as_ref()),
            "networkAttachMs": r.network.as_ref().map(|n| n.attach_ms),
        });
        PodInfo {
            id: self.id.clone(),
            config: r.config.clone(),
            state: if r.phase == PodPhase::Ready {
                PodState::Ready
            } else {
                PodState::NotReady
            },
            created_at_ns: r.created_at_ns,
            verbose_json: verbose.to_string(),
            ips: r.network.as_ref().map(|n| n.ips()).unwrap_or_default(),
        }
    }
}

impl Container {
    fn save(&self) -> Result<(), RuntimeError> {
        let rec = lock(&self.record).clone();
        store::write_json(&self.pod.paths.container(&self.id), &rec)?;
        Ok(())
    }

    fn info(&self) -> ContainerInfo {
        let r = lock(&self.record);
        ContainerInfo {
            id: r.id.clone(),
            pod_id: r.pod_id.clone(),
            config: r.config.clone(),
            image_id: r.image_id.clone(),
            state: r.state,
            created_at_ns: r.created_at_ns,
            started_at_ns: r.started_at_ns,
            finished_at_ns: r.finished_at_ns,
            exit_code: r.exit_code,
            reason: r.reason.clone(),
            message: r.message.clone(),
            log_path: r.log_path.clone(),
            verbose_json: serde_json::json!({
                "slot": r.slot,
                "guestFinishedAtNs": r.guest_finished_at_ns,
                "exitSeenAtNs": r.exit_seen_at_ns,
                "finishedAtNs": r.finished_at_ns,
                "logComplete": *self.log_done.borrow(),
            })
            .to_string(),
        }
    }

    /// Stops the log copy and the exit watch; the log takes nothing more.
    fn abort_tasks(&self) {
        for t in [&self.log_task, &self.exit_task] {
            if let Some(t) = lock(t).take() {
                t.abort();
            }
        }
        self.log_done.send_replace(true);
    }
}

impl Inner {
    fn emit(&self, container_id: &str, pod_id: &str, kind: EventKind) {
        let _ = self.events.send(ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            at_ns: now_ns(),
        });
    }

    fn pod(&self, id: &str) -> Result<Arc<Pod>, RuntimeError> {
        lock(&self.tables)
            .pods
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {id:?} not found")))
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        lock(&self.tables)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id:?} not found")))
    }

    fn containers_of(&self, pod_id: &str) -> Vec<Arc<Container>> {
        lock(&self.tables)
            .containers
            .values()
            .filter(|c| c.pod.id == pod_id)
            .cloned()
            .collect()
    }
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
            std::fs::create_dir_all(&dir).map_err(|source| store::StoreError::Io {
                op: "create",
                path: dir.clone(),
                source,
            })?;
        }
        let (events, _) = broadcast::channel(256);
        let rt = Runtime {
            inner: Arc::new(Inner {
                boots: tokio::sync::Semaphore::new(settings.vm.max_concurrent_boots as usize),
                warm: warm::WarmPool::new(
                    settings.vm.warm_pool as usize,
                    (settings.vm.vcpus, settings.vm.mem_mib),
                ),
                network: PodNetworks::new(settings.network.clone(), &settings.state_dir),
                settings,
                vms,
                images,
                tables: Mutex::new(Tables::default()),
                events,
                pod_cidr: Mutex::new(String::new()),
            }),
        };
        recovery::recover(&rt.inner).await;
        tokio::spawn(warm::refill(rt.inner.clone()));
        Ok(rt)
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
            verbose_json: serde_json::json!({ "warmPool": self.inner.warm.state() }).to_string(),
        }
    }

    fn set_pod_cidr(&self, cidr: &str) -> Result<(), BackendError> {
        tracing::info!(cidr, "pod CIDR set");
        *lock(&self.inner.pod_cidr) = cidr.to_owned();
        Ok(())
    }

    async fn run_pod(&self, config: PodConfig) -> Result<String, BackendError> {
        Ok(pod::run(&self.inner, config).await?)
    }

    async fn stop_pod(&self, id: &str) -> Result<(), BackendError> {
        Ok(pod::stop(&self.inner, id).await?)
    }

    async fn remove_pod(&self, id: &str) -> Result<(), BackendError> {
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
        Ok(container::create(&self.inner, pod_id, config).await?)
    }

    async fn start_container(&self, id: &str) -> Result<(), BackendError> {
        Ok(container::start(&self.inner, id).await?)
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), BackendError> {
        let c = self.inner.container(id)?;
        Ok(container::stop(&self.inner, &c, timeout).await?)
    }

    async fn remove_container(&self, id: &str) -> Result<(), BackendError> {
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
        Ok(exec::exec_sync(&self.inner, id, cmd, timeout).await?)
    }

    async fn update_container_resources(
        &self,
        id: &str,
        resources: ResourcesConfig,
    ) -> Result<(), BackendError> {
        Ok(resources::update(&self.inner, id, resources).await?)
    }

    async fn pod_usage(
        &self,
        pod_id: &str,
        container_ids: Vec<String>,
    ) -> Result<PodUsage, BackendError> {
        Ok(stats::pod_usage(&self.inner, pod_id, container_ids).await?)
    }

    async fn reopen_log(&self, id: &str) -> Result<(), BackendError> {
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
