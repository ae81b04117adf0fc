//! The runtime's state in memory: the pods and containers it knows, and the parts
//! every operation reaches (settings, VMs, warm pool, network, images, events).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use vmlet_cri::runtime::{
    ContainerEvent, ContainerInfo, ContainerState, EventKind, PodInfo, PodMetadata, PodState,
    ProcessUser,
};

use super::deadline::BootEstimate;
use super::error::RuntimeError;
use super::pool::WarmPools;
use super::util::{lock, now_ns};
use crate::config::VmConfig;
use crate::images::{ImageLease, ImageManager};
use crate::logs::{LogHealth, OutputTap, SharedSink};
use crate::network::pod::{NetworkSettings, PodNetworks};
use crate::sandbox::{Hypervisor, Vm};
use crate::store::{self, ContainerRecord, PodPaths, PodPhase, PodRecord};
use crate::volumes::{PodVolumes, VolumeSettings};

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
    /// Volumes.
    pub volumes: VolumeSettings,
    /// What security contexts name.
    pub security: super::security::SecuritySettings,
    /// How VMMs are jailed.
    pub jail: crate::sandbox::jail::JailConfig,
    /// The pods' host cgroups.
    pub cgroups: crate::sandbox::cgroup::CgroupSettings,
    /// RuntimeClass handlers other than the default.
    pub runtimes: std::collections::BTreeMap<String, crate::config::RuntimeClassConfig>,
    /// Where the runtime counts boots and pod starts.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A pod in memory.
pub(super) struct Pod {
    pub(super) id: String,
    pub(super) paths: PodPaths,
    pub(super) record: Mutex<PodRecord>,
    pub(super) vm: Mutex<Option<Vm>>,
    /// Serialises lifecycle changes of the pod and its containers.
    pub(super) op: tokio::sync::Mutex<()>,
    /// The containers' volumes in the guest.
    pub(super) volumes: Arc<PodVolumes>,
    /// False while recovery after a restart is still taking the pod over.
    pub(super) settled: tokio::sync::watch::Sender<bool>,
}

/// A container in memory.
pub(super) struct Container {
    pub(super) id: String,
    pub(super) pod: Arc<Pod>,
    pub(super) record: Mutex<ContainerRecord>,
    /// Its image's and its image volumes' leases.
    pub(super) _leases: Vec<ImageLease>,
    pub(super) sink: SharedSink,
    /// The log copy's unrecovered write error, if any.
    pub(super) log_health: LogHealth,
    pub(super) log_task: Mutex<Option<JoinHandle<()>>>,
    pub(super) exit_task: Mutex<Option<JoinHandle<()>>>,
    /// True once the log copy has ended (everything copied, or it failed).
    pub(super) log_done: tokio::sync::watch::Sender<bool>,
    /// The output the log copy reads, for attach sessions.
    pub(super) output: OutputTap,
}

#[derive(Default)]
pub(super) struct Tables {
    pub(super) pods: HashMap<String, Arc<Pod>>,
    pub(super) containers: HashMap<String, Arc<Container>>,
    pub(super) pod_names: HashMap<PodMetadata, String>,
    pub(super) container_names: HashMap<(String, String, u32), String>,
}

pub(super) struct Inner {
    pub(super) settings: Settings,
    /// Starts and finds the pods' VMs.
    pub(super) vms: Arc<dyn Hypervisor>,
    /// Permits to boot a guest (`vm.max_concurrent_boots`).
    pub(super) boots: tokio::sync::Semaphore,
    /// Pre-booted VMs (`vm.warm_pool` and each handler's `warm_pool`).
    pub(super) warm: WarmPools,
    /// Snapshots pods start from (`vm.templates`).
    pub(super) templates: super::template::Templates,
    /// What a fresh boot takes, for RunPodSandbox's deadline.
    pub(super) boot_estimate: BootEstimate,
    /// The uids of the pods' jails.
    pub(super) uids: crate::sandbox::jail::uids::UidPool,
    pub(super) network: PodNetworks,
    pub(super) images: Arc<ImageManager>,
    pub(super) tables: Mutex<Tables>,
    pub(super) events: broadcast::Sender<ContainerEvent>,
    pub(super) pod_cidr: Mutex<String>,
    /// Recovery's background tasks (taking pods over, undoing unfinished ones).
    pub(super) recovery: Mutex<Vec<JoinHandle<()>>>,
}

/// Lines of `vmm.log` and `console.log` that verbose PodSandboxStatus shows of a pod
/// whose VM died.
pub(super) const EXIT_TAIL_LINES: usize = 20;

pub(super) fn pod_name(m: &PodMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

impl Pod {
    pub(super) fn save(&self) -> Result<(), RuntimeError> {
        let rec = lock(&self.record).clone();
        store::write_json(&self.paths.record(), &rec)?;
        Ok(())
    }

    pub(super) fn vm(&self) -> Option<Vm> {
        lock(&self.vm).clone()
    }

    pub(super) fn info(&self) -> PodInfo {
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

impl Pod {
    /// Waits until recovery is done with the pod (at once for every other pod).
    pub(super) async fn settled(&self) {
        let mut rx = self.settled.subscribe();
        // The sender lives in the pod itself, so it cannot be dropped while waited on.
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Container {
    pub(super) fn save(&self) -> Result<(), RuntimeError> {
        let rec = lock(&self.record).clone();
        store::write_json(&self.pod.paths.container(&self.id), &rec)?;
        Ok(())
    }

    pub(super) fn info(&self) -> ContainerInfo {
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
            user: (r.state != ContainerState::Unknown).then(|| ProcessUser {
                uid: r.process.uid,
                gid: r.process.gid,
                supplemental_groups: r.process.additional_gids.clone(),
            }),
            verbose_json: serde_json::json!({
                "slot": r.slot,
                "mounts": r.volumes,
                "guestFinishedAtNs": r.guest_finished_at_ns,
                "exitSeenAtNs": r.exit_seen_at_ns,
                "finishedAtNs": r.finished_at_ns,
                "logComplete": *self.log_done.borrow(),
                "logError": *lock(&self.log_health),
            })
            .to_string(),
        }
    }

    /// Stops the log copy and the exit watch; the log takes nothing more.
    pub(super) fn abort_tasks(&self) {
        for t in [&self.log_task, &self.exit_task] {
            if let Some(t) = lock(t).take() {
                t.abort();
            }
        }
        self.log_done.send_replace(true);
    }
}

impl Inner {
    pub(super) fn emit(&self, container_id: &str, pod_id: &str, kind: EventKind) {
        let _ = self.events.send(ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            at_ns: now_ns(),
        });
    }

    pub(super) fn pod(&self, id: &str) -> Result<Arc<Pod>, RuntimeError> {
        lock(&self.tables)
            .pods
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {id:?} not found")))
    }

    pub(super) fn container(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        lock(&self.tables)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id:?} not found")))
    }

    pub(super) fn containers_of(&self, pod_id: &str) -> Vec<Arc<Container>> {
        lock(&self.tables)
            .containers
            .values()
            .filter(|c| c.pod.id == pod_id)
            .cloned()
            .collect()
    }
}
