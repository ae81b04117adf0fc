//! Pods: RunPodSandbox, StopPodSandbox, RemovePodSandbox, and a VM that dies.

use std::sync::Arc;
use std::time::Duration;

use vmlet_cri::runtime::{ContainerState, EventKind, PodConfig};
use vmlet_proto::agent as pb;

use super::{launch, lock, new_id, now_ns, pod_name, Inner, Pod, RuntimeError};
use crate::network::pod::{NetworkError, PodNetRecord, PodNetworks};
use crate::sandbox::{guest, vmm, Vm};
use crate::store::{self, PodPaths, PodPhase, PodRecord};

/// How long a stopping guest may take to power off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// vCPUs and MiB of a pod's VM.
fn size(inner: &Inner, c: &PodConfig) -> Result<(u32, u64), RuntimeError> {
    let vm = &inner.settings.vm;
    let vcpus = c.vcpus.unwrap_or(vm.vcpus);
    let mem = match c.memory_mib {
        Some(m) => m.saturating_add(vm.overhead_mem_mib),
        None => vm.mem_mib,
    };
    if mem < vm.min_mem_mib {
        return Err(RuntimeError::Invalid(format!(
            "the pod asks for {mem} MiB (memory limit plus {} MiB overhead); a pod VM needs at least {} MiB",
            vm.overhead_mem_mib, vm.min_mem_mib
        )));
    }
    Ok((vcpus, mem))
}

/// Removes what a pod left on disk.
pub(super) fn remove_files(paths: &PodPaths) {
    for dir in [&paths.dir, &paths.run_dir] {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Runs a pod: a pre-booted VM of its size from the warm pool if there is one, else a
/// fresh one (disks, VMM, guest configuration).
pub async fn run(inner: &Arc<Inner>, config: PodConfig) -> Result<String, RuntimeError> {
    let size = size(inner, &config)?;
    let _starting = inner.warm.starting();
    // Fails before a warm VM is taken.
    let network = inner.network.current()?;
    let warm = inner.warm.take(size).await;
    let id = match &warm {
        Some(w) => w.id.clone(),
        None => new_id()?,
    };
    {
        let mut t = lock(&inner.tables);
        if let Some(other) = t.pod_names.get(&config.metadata).cloned() {
            drop(t);
            if let Some(w) = warm {
                inner.warm.put_back(w);
            }
            return Err(RuntimeError::AlreadyExists(format!(
                "pod sandbox name {:?} is reserved for {other}",
                pod_name(&config.metadata)
            )));
        }
        t.pod_names.insert(config.metadata.clone(), id.clone());
    }
    let paths = PodPaths::new(&inner.settings.state_dir, &inner.settings.runtime_dir, &id);
    let started = match warm {
        Some(w) => launch::adopt(inner, w, config.clone(), network).await,
        None => launch::boot(inner, &id, &paths, config.clone(), size, network).await,
    };
    match started {
        Ok(pod) => {
            lock(&inner.tables).pods.insert(id.clone(), pod.clone());
            watch_vm(inner.clone(), pod);
            tracing::info!(pod = %id, name = %pod_name(&config.metadata), vcpus = size.0, mem_mib = size.1, "pod ready");
            Ok(id)
        }
        Err(e) => {
            undo(inner, &paths).await;
            lock(&inner.tables).pod_names.remove(&config.metadata);
            tracing::warn!(pod = %id, "pod failed to start: {e}");
            Err(e)
        }
    }
}

/// Undoes what a VM that never became a pod made, from its record on disk (see
/// `network::pod`); its VMM is gone already. When the namespace cannot be removed, the
/// record stays (phase Creating or Warm) and the next daemon start tries again.
pub(super) async fn undo(inner: &Inner, paths: &PodPaths) {
    let released = match store::read_json::<PodRecord>(&paths.record()) {
        Ok(record) => release_network(inner, &record, true).await,
        Err(_) => Ok(()),
    };
    match released {
        Ok(()) => remove_files(paths),
        Err(e) => tracing::error!(dir = %paths.dir.display(), "undoing the network: {e}"),
    }
}

/// Runs a blocking network step on the blocking pool, with the pod's network record.
pub(super) async fn network_step(
    networks: &PodNetworks,
    id: &str,
    config: &PodConfig,
    rec: PodNetRecord,
    step: fn(&PodNetworks, &str, &PodConfig, &mut PodNetRecord) -> Result<(), NetworkError>,
) -> (PodNetRecord, Result<(), NetworkError>) {
    let before = rec.clone();
    let (networks, id, config) = (networks.clone(), id.to_owned(), config.clone());
    let task = tokio::task::spawn_blocking(move || {
        let mut rec = rec;
        let r = step(&networks, &id, &config, &mut rec);
        (rec, r)
    });
    match task.await {
        Ok(done) => done,
        Err(e) => (before, Err(NetworkError::Interrupted(e.to_string()))),
    }
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

/// DEL (if owed) and the namespace removed, for a pod whose record says it has a
/// network. `never_ran`: the pod's RunPodSandbox did not succeed, so a failing DEL
/// does not keep the namespace (see [`PodNetworks::discard`]).
pub(super) async fn release_network(
    inner: &Inner,
    record: &PodRecord,
    never_ran: bool,
) -> Result<(), RuntimeError> {
    let Some(net) = record.network.clone() else {
        return Ok(());
    };
    let step = if never_ran {
        PodNetworks::discard
    } else {
        PodNetworks::remove
    };
    let (_, result) = network_step(&inner.network, &record.id, &record.config, net, step).await;
    Ok(result?)
}

/// Hostname, network and DNS of the guest. The pod's DNS config (kubelet's) wins over
/// what the CNI plugins returned.
pub(super) async fn configure(
    vm: &Vm,
    c: &PodConfig,
    net: Option<&PodNetRecord>,
) -> Result<(), RuntimeError> {
    let hostname = if c.hostname.is_empty() {
        c.metadata.name.clone()
    } else {
        c.hostname.clone()
    };
    let cni_dns = net.map(PodNetRecord::dns).unwrap_or_default();
    let dns = if !c.dns.servers.is_empty() || !c.dns.searches.is_empty() {
        Some(pb::Dns {
            servers: c.dns.servers.clone(),
            searches: c.dns.searches.clone(),
            options: c.dns.options.clone(),
        })
    } else if !cni_dns.nameservers.is_empty() || !cni_dns.search.is_empty() {
        Some(pb::Dns {
            servers: cni_dns.nameservers,
            searches: cni_dns.search,
            options: cni_dns.options,
        })
    } else {
        None
    };
    let (interfaces, routes) = net.map(PodNetRecord::guest_config).unwrap_or_default();
    let ips = net.map(PodNetRecord::ips).unwrap_or_default();
    // The guest checks the sysctls against its allow-list (namespaced keys only).
    vm.client
        .clone()
        .configure_guest(guest::req(
            pb::ConfigureGuestRequest {
                hostname: hostname.clone(),
                dns,
                interfaces,
                routes,
                sysctls: c.sysctls.clone(),
            },
            guest::CALL,
        ))
        .await
        .map_err(RuntimeError::guest("ConfigureGuest"))?;
    // The pod's /etc/hosts, bound into containers that get none from kubelet, as
    // containerd writes one per sandbox.
    vm.client
        .clone()
        .write_file(guest::req(
            pb::WriteFileRequest {
                path: "hosts".into(),
                data: hosts_file(&hostname, &ips).into_bytes(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            guest::CALL,
        ))
        .await
        .map_err(RuntimeError::guest("WriteFile"))?;
    Ok(())
}

/// /etc/hosts of a pod: loopback names, and the hostname on each pod address.
fn hosts_file(hostname: &str, ips: &[String]) -> String {
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

/// Watches a pod's VMM: when it exits without being stopped, the pod is not ready and
/// its containers have exited.
pub(super) fn watch_vm(inner: Arc<Inner>, pod: Arc<Pod>) {
    let Some(vm) = pod.vm() else { return };
    let mut exited = vm.exited();
    tokio::spawn(async move {
        let _ = exited.wait_for(|e| *e).await;
        let unexpected = lock(&pod.record).phase == PodPhase::Ready;
        if unexpected {
            tracing::warn!(pod = %pod.id, pid = vm.pid, "the pod's VM exited unexpectedly");
            vm_gone(
                &inner,
                &pod,
                "VMExited",
                &format!(
                    "the pod's VM (vmlet-vmm pid {}) exited while the container ran",
                    vm.pid
                ),
            );
        }
    });
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
    if let Err(e) = pod.save() {
        tracing::error!(pod = %pod.id, "{e}");
    }
    for c in inner.containers_of(&pod.id) {
        c.abort_tasks();
        let changed = {
            let mut r = lock(&c.record);
            if matches!(r.state, ContainerState::Created | ContainerState::Running) {
                r.state = ContainerState::Exited;
                r.exit_code = 255;
                r.reason = reason.to_owned();
                r.message = message.to_owned();
                r.finished_at_ns = now_ns();
                true
            } else {
                false
            }
        };
        if changed {
            if let Err(e) = c.save() {
                tracing::error!(container = %c.id, "{e}");
            }
            inner.emit(&c.id, &pod.id, EventKind::Stopped);
        }
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
    if let Some(vm) = pod.vm() {
        vm.stop(SHUTDOWN_GRACE).await;
    }
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
    if let Some(pid) = vmm::find(&pod.paths.control()) {
        vmm::signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let record = lock(&pod.record).clone();
    release_network(inner, &record, false).await?;
    remove_files(&pod.paths);
    let metadata = lock(&pod.record).config.metadata.clone();
    let mut t = lock(&inner.tables);
    t.pods.remove(&pod.id);
    t.pod_names.remove(&metadata);
    tracing::info!(pod = %pod.id, "pod removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_file_names_the_pod_on_its_addresses() {
        let h = super::hosts_file("web", &["10.88.0.5".into(), "fd00::5".into()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.ends_with("10.88.0.5\tweb\nfd00::5\tweb\n"), "{h}");
        assert!(!super::hosts_file("web", &[]).contains("web"));
    }
}
