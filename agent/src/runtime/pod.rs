//! Pods: RunPodSandbox, StopPodSandbox, RemovePodSandbox, and a VM that dies.

use std::sync::Arc;
use std::time::Duration;

use vmlet_cri::runtime::{ContainerState, EventKind, PodConfig};

use super::container::{record_exit, Exit};
use super::deadline::Deadline;
use super::error::RuntimeError;
use super::launch::{self, network_step, release_network, remove_files};
use super::pool::WarmVm;
use super::state::{pod_name, Inner, Pod};
use super::util::{lock, new_id};
use super::warm;
use crate::config::SharedFs;
use crate::network::cni::NetworkConfig;
use crate::network::pod::PodNetworks;
use crate::sandbox::{read_exit_record, VmmExit};
use crate::store::{PodPaths, PodPhase};

/// How long a warm VM's guest may take to answer the ping before it is handed out.
const WARM_PING: Duration = Duration::from_secs(3);
/// How long a stopping guest may take to power off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// vCPUs and MiB of a pod's VM: its limits, else its handler's defaults (an unknown
/// handler is refused here, before anything is made).
fn size(inner: &Inner, c: &PodConfig) -> Result<(u32, u64), RuntimeError> {
    let vm = &inner.settings.vm;
    let default = inner.settings.handler(&c.runtime_handler)?.size;
    let vcpus = c.vcpus.unwrap_or(default.0);
    let mem = match c.memory_mib {
        Some(m) => m.saturating_add(vm.overhead_mem_mib),
        None => default.1,
    };
    if mem < vm.min_mem_mib {
        return Err(RuntimeError::Invalid(format!(
            "the pod asks for {mem} MiB (memory limit plus {} MiB overhead); a pod VM needs at least {} MiB",
            vm.overhead_mem_mib, vm.min_mem_mib
        )));
    }
    Ok((vcpus, mem))
}

/// Runs a pod: a pre-booted VM of its size from the warm pool if there is one, else a
/// fresh one (disks, VMM, guest configuration). A warm VM that fails any step before
/// the pod is handed out is discarded and the same call goes on with a fresh boot: a
/// spare that vmlet prepared never fails a pod by itself. Every step gets what is left
/// of `deadline`, and a fresh boot after a failed warm VM is started only if one (as
/// slow as the slowest recent boot) can finish in time.
pub async fn run(
    inner: &Arc<Inner>,
    config: PodConfig,
    deadline: Deadline,
) -> Result<String, RuntimeError> {
    let size = size(inner, &config)?;
    // A cgroup_parent that names no cgroup fails before a warm VM is taken.
    if inner.settings.cgroups.root.is_some() {
        crate::sandbox::cgroup::parent_path(inner.settings.cgroups.driver, &config.cgroup_parent)?;
    }
    let _starting = inner.warm.starting();
    // Fails before a warm VM is taken.
    let network = inner.network.current()?;
    // A spare that failed its ping is the first cause if the fresh boot fails too.
    // Warm VMs have a shared file system only if every pod gets one.
    let vm = &inner.settings.vm;
    let (warm, mut warm_failure) =
        if vm.shared_fs_for(&config.annotations) && vm.shared_fs != SharedFs::Always {
            (None, None)
        } else {
            take_live_warm(inner, &config.runtime_handler, size, deadline).await
        };
    let mut id = match &warm {
        Some(w) => w.id.clone(),
        None => new_id()?,
    };
    if let Err(e) = reserve_name(inner, &config, &id) {
        if let Some(w) = warm {
            inner.warm.put_back(w);
        }
        return Err(e);
    }
    if let Some(w) = warm {
        match adopt_warm(inner, w, &config, network.clone(), deadline).await {
            Ok(pod) => return Ok(ready(inner, pod, &config, size)),
            Err(e) => {
                warm_failure = Some(e);
                id = new_id()?;
                lock(&inner.tables)
                    .pod_names
                    .insert(config.metadata.clone(), id.clone());
            }
        }
    }
    if let Err(e) = fallback_fits(inner, deadline, warm_failure.as_ref()) {
        lock(&inner.tables).pod_names.remove(&config.metadata);
        tracing::warn!(pod = %id, "pod failed to start: {e}");
        return Err(e);
    }
    let paths = PodPaths::new(&inner.settings.state_dir, &inner.settings.runtime_dir, &id);
    let spare_network = network.clone();
    match launch::boot(inner, &id, &paths, config.clone(), size, network, deadline).await {
        Ok(pod) => {
            if !lock(&pod.record).shared_fs {
                warm::make_in_background(inner, &config.runtime_handler, size, spare_network);
            }
            Ok(ready(inner, pod, &config, size))
        }
        Err(e) => {
            warm::keep_console(inner, &paths);
            launch::undo(inner, &paths).await;
            lock(&inner.tables).pod_names.remove(&config.metadata);
            tracing::warn!(pod = %id, "pod failed to start: {e}");
            Err(match warm_failure {
                Some(warm) => RuntimeError::WarmFallback {
                    warm: Box::new(warm),
                    cold: Box::new(e),
                },
                None => e,
            })
        }
    }
}

/// Reserves the pod's name for `id`.
fn reserve_name(inner: &Inner, config: &PodConfig, id: &str) -> Result<(), RuntimeError> {
    let mut t = lock(&inner.tables);
    if let Some(other) = t.pod_names.get(&config.metadata) {
        return Err(RuntimeError::AlreadyExists(format!(
            "pod sandbox name {:?} is reserved for {other}",
            pod_name(&config.metadata)
        )));
    }
    t.pod_names.insert(config.metadata.clone(), id.to_owned());
    Ok(())
}

/// Whether a fresh boot may start: the deadline has not passed, and after a failed
/// warm VM (`warm_failure`) a boot as slow as the slowest recent one still fits.
/// Otherwise the call fails with DeadlineExceeded, naming what was tried.
fn fallback_fits(
    inner: &Inner,
    deadline: Deadline,
    warm_failure: Option<&RuntimeError>,
) -> Result<(), RuntimeError> {
    let need = match warm_failure {
        Some(_) => inner.boot_estimate.get(),
        None => Duration::ZERO,
    };
    if deadline.allows(need) {
        return Ok(());
    }
    let left = deadline.describe_left();
    Err(RuntimeError::Timeout(match warm_failure {
        Some(warm) => format!(
            "the warm VM failed ({warm}), and a fresh boot (the slowest recent one took \
             {} ms) cannot finish in the {left} the call's deadline leaves: none was started",
            need.as_millis()
        ),
        None => format!(
            "the call's deadline passed before a VM could be booted ({left} left; \
             the warm pool had none ready)"
        ),
    }))
}

/// Adopts a warm VM for the pod; one that fails is discarded (its console kept, the
/// failure counted), and the failure returned.
async fn adopt_warm(
    inner: &Arc<Inner>,
    w: WarmVm,
    config: &PodConfig,
    network: Option<NetworkConfig>,
    deadline: Deadline,
) -> Result<Arc<Pod>, RuntimeError> {
    let (id, paths) = (w.id.clone(), w.paths.clone());
    match launch::adopt(inner, w, config.clone(), network, deadline).await {
        Ok(pod) => Ok(pod),
        Err(e) => {
            tracing::warn!(pod = %id, "the warm VM failed ({e}): booting a fresh VM for the pod");
            warm::keep_console(inner, &paths);
            launch::undo(inner, &paths).await;
            inner.warm.count_failure(&config.runtime_handler);
            Err(e)
        }
    }
}

/// A warm VM whose guest answers a ping, if the pool has one: dead or silent spares
/// are discarded (and counted) on the way, before a pod depends on them. Also returns
/// why the last spare discarded failed. The ping gets at most what is left of
/// `deadline`; none is taken once it has passed.
async fn take_live_warm(
    inner: &Arc<Inner>,
    handler: &str,
    size: (u32, u64),
    deadline: Deadline,
) -> (Option<WarmVm>, Option<RuntimeError>) {
    let mut failed = None;
    loop {
        if !deadline.allows(Duration::ZERO) {
            return (None, failed);
        }
        let Some(pool) = inner.warm.of(handler) else {
            return (None, failed);
        };
        let Some(w) = pool.take(size, deadline.at()).await else {
            return (None, failed);
        };
        match w.vm.ping(deadline.cap(WARM_PING)).await {
            Ok(()) => return (Some(w), failed),
            Err(e) => {
                tracing::warn!(pod = %w.id, "a warm VM does not answer ({e}): discarding it");
                pool.count_failure();
                warm::keep_console(inner, &w.paths);
                warm::discard(inner, w).await;
                failed = Some(e.into());
            }
        }
    }
}

/// Enters a started pod in the tables and watches its VM.
fn ready(inner: &Arc<Inner>, pod: Arc<Pod>, config: &PodConfig, size: (u32, u64)) -> String {
    let id = pod.id.clone();
    lock(&inner.tables).pods.insert(id.clone(), pod.clone());
    watch_vm(inner.clone(), pod);
    tracing::info!(pod = %id, name = %pod_name(&config.metadata), vcpus = size.0, mem_mib = size.1, "pod ready");
    id
}

/// DEL for a pod whose network is attached; its record is updated.
async fn detach_network(inner: &Inner, pod: &Pod) -> Result<(), RuntimeError> {
    let (net, config) = {
        let r = lock(&pod.record);
        (r.network.clone(), r.config.clone())
    };
    let Some(net) = net.filter(|n| n.attached) else {
        return Ok(());
    };
    let (net, result) =
        network_step(&inner.network, &pod.id, &config, net, PodNetworks::detach).await;
    lock(&pod.record).network = Some(net);
    pod.save()?;
    Ok(result?)
}

/// The reason containers of a pod whose VM died report.
pub(super) const VM_EXITED: &str = "VMExited";

/// Watches a pod's VMM: when it exits without vmletd asking it to (any status, any
/// signal), the pod is not ready at once and its containers have exited.
pub(super) fn watch_vm(inner: Arc<Inner>, pod: Arc<Pod>) {
    let Some(vm) = pod.vm() else { return };
    tokio::spawn(async move {
        let exit = vm.wait_exit_status().await;
        let unexpected = lock(&pod.record).phase == PodPhase::Ready;
        if unexpected {
            tracing::error!(pod = %pod.id, pid = vm.pid, %exit, "the pod's VM exited unexpectedly");
            vm_gone(
                &inner,
                &pod,
                VM_EXITED,
                &format!(
                    "the pod's VM (vmlet-vmm pid {}) ended by itself: {}; see the pod's vmm.log and console.log",
                    vm.pid,
                    vmm_end(&pod.paths, exit)
                ),
            );
        }
    });
}

/// How a pod's VMM ended, in words: `exit`, or when its exit record says more (it
/// always does, but for a signal), the status and why:
/// `exit status 1 (vCPU 0: KVM_RUN failed: ...)`.
pub(super) fn vmm_end(paths: &PodPaths, exit: VmmExit) -> String {
    match (exit, read_exit_record(&paths.vmm_exit())) {
        (VmmExit::Signal(_), _) | (_, None) => exit.to_string(),
        (_, Some(r)) => format!("exit status {} ({})", r.code, r.reason),
    }
}

/// Marks a pod whose VM is gone, and its live containers exited with `reason`.
pub(super) fn vm_gone(inner: &Inner, pod: &Pod, reason: &str, message: &str) {
    {
        let mut r = lock(&pod.record);
        r.phase = PodPhase::Stopped;
        r.vmm_pid = None;
        r.vm_exit = Some(message.to_owned());
    }
    *lock(&pod.vm) = None;
    pod.volumes.stop();
    if let Err(e) = pod.save() {
        tracing::error!(pod = %pod.id, "{e}");
    }
    for c in inner.containers_of(&pod.id) {
        c.abort_tasks();
        record_exit(inner, &c, Exit::lost(reason, message));
    }
}

/// Stops a pod: kills its containers, powers its VM off. Idempotent.
pub async fn stop(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let pod = inner.pod(id)?;
    let _op = pod.op.lock().await;
    stop_locked(inner, &pod).await
}

async fn stop_locked(inner: &Arc<Inner>, pod: &Arc<Pod>) -> Result<(), RuntimeError> {
    if lock(&pod.record).phase == PodPhase::Ready {
        stop_vm(inner, pod).await?;
    }
    // Also for a pod whose VM died by itself: its IP goes back to the pool.
    detach_network(inner, pod).await
}

async fn stop_vm(inner: &Arc<Inner>, pod: &Arc<Pod>) -> Result<(), RuntimeError> {
    for c in inner.containers_of(&pod.id) {
        if lock(&c.record).state == ContainerState::Running {
            if let Err(e) = super::container::stop(inner, &c, Duration::ZERO).await {
                tracing::warn!(container = %c.id, "stopping with the pod: {e}");
            }
        }
    }
    lock(&pod.record).phase = PodPhase::Stopped;
    match pod.vm() {
        Some(vm) => vm.stop(SHUTDOWN_GRACE).await,
        // A VMM recovery could not take over yet (its guest did not answer).
        None => inner.vms.kill_stray(&pod.paths.control()).await,
    }
    // Its guest is gone: the shared volumes' binds and virtiofsd go too.
    launch::teardown_share(&pod.paths).await;
    vm_gone(
        inner,
        pod,
        "PodStopped",
        "the pod was stopped before the container ended",
    );
    {
        let mut r = lock(&pod.record);
        r.vm_exit = None;
    }
    pod.save()?;
    tracing::info!(pod = %pod.id, "pod stopped");
    Ok(())
}

/// Removes a pod, its containers and its files.
pub async fn remove(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let pod = inner.pod(id)?;
    let _op = pod.op.lock().await;
    stop_locked(inner, &pod).await?;
    for c in inner.containers_of(&pod.id) {
        c.abort_tasks();
        let (name, attempt) = {
            let r = lock(&c.record);
            (r.config.name.clone(), r.config.attempt)
        };
        {
            let mut t = lock(&inner.tables);
            t.containers.remove(&c.id);
            t.container_names.remove(&(pod.id.clone(), name, attempt));
        }
        inner.emit(&c.id, &pod.id, EventKind::Deleted);
    }
    // A VMM found by its control socket (for pods whose pid was never recorded).
    inner.vms.kill_stray(&pod.paths.control()).await;
    let record = lock(&pod.record).clone();
    release_network(inner, &record, false).await?;
    launch::teardown_share(&pod.paths).await;
    remove_files(&pod.paths);
    let metadata = lock(&pod.record).config.metadata.clone();
    let mut t = lock(&inner.tables);
    t.pods.remove(&pod.id);
    t.pod_names.remove(&metadata);
    tracing::info!(pod = %pod.id, "pod removed");
    Ok(())
}
