//! Making a pod's VM: its record, network namespace and tap, disks and VMM
//! ([`prepare`]), the boot ([`start_vm`], at most `vm.max_concurrent_boots` at once),
//! and the pod's own part: CNI ADD and ConfigureGuest ([`boot`] for a fresh VM, which
//! boots while ADD runs; [`adopt`] for a pre-booted one from the warm pool).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmlet_cri::runtime::PodConfig;

use super::pod::{configure, network_step};
use super::warm::WarmVm;
use super::{now_ns, Inner, Pod, RuntimeError};
use crate::network::cni::NetworkConfig;
use crate::network::pod::PodNetworks;
use crate::sandbox::{disk, vmm, SandboxError, Vm, VmmCommand};
use crate::store::{self, PodPaths, PodPhase, PodRecord, SlotRecord};

/// How long a boot waited for its turn and how long it took.
pub(super) struct BootTimes {
    pub queued: Duration,
    pub booted: Duration,
}

/// Everything a VM needs before it boots: directories, the record (written first, in
/// `phase`: a daemon that dies from here on finds it and tears it down, network
/// included), the namespace and tap for `network`, the disks. Returns the record and
/// the VMM command.
pub(super) async fn prepare(
    inner: &Inner,
    id: &str,
    paths: &PodPaths,
    config: PodConfig,
    size: (u32, u64),
    phase: PodPhase,
    network: Option<NetworkConfig>,
) -> Result<(PodRecord, VmmCommand), RuntimeError> {
    let s = &inner.settings;
    for dir in [paths.containers(), paths.run_dir.clone()] {
        std::fs::create_dir_all(&dir).map_err(|source| store::StoreError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
    }
    let slots: Vec<SlotRecord> = (0..s.vm.image_slots)
        .map(|i| SlotRecord {
            serial: format!("slot{i}"),
            image_id: None,
            users: 0,
        })
        .collect();
    let mut record = PodRecord {
        id: id.to_owned(),
        config: config.clone(),
        phase,
        created_at_ns: now_ns(),
        vcpus: size.0,
        mem_mib: size.1,
        vmm_pid: None,
        slots: slots.clone(),
        vm_exit: None,
        network: network.map(|n| inner.network.plan(id, n)),
    };
    store::write_json(&paths.record(), &record)?;
    if let Some(net) = record.network.take() {
        let (net, result) = network_step(&inner.network, id, &config, net, |n, id, _, rec| {
            n.prepare(id, rec)
        })
        .await;
        record.network = Some(net);
        store::write_json(&paths.record(), &record)?;
        result?;
    }
    disk::make_scratch(&paths.scratch(), s.vm.scratch_mib).await?;
    disk::make_placeholder(&paths.placeholder())?;
    let mut drives = vec![("scratch".to_owned(), paths.scratch(), false)];
    drives.extend(
        slots
            .iter()
            .map(|sl| (sl.serial.clone(), paths.placeholder(), true)),
    );
    let cmd = VmmCommand {
        binary: s.vmm.clone(),
        kernel: s.kernel.clone(),
        initramfs: s.initramfs.clone(),
        kernel_args: s.vm.kernel_args.clone(),
        free_page_reporting: s.vm.free_page_reporting,
        vcpus: size.0,
        mem_mib: size.1,
        drives,
        vsock: paths.vsock(),
        control: paths.control(),
        console: paths.console(),
        log: paths.vmm_log(),
        netns: record.network.as_ref().map(|n| n.netns.clone()),
        nets: record
            .network
            .iter()
            .map(|n| (n.tap.clone(), n.guest_mac.clone()))
            .collect(),
    };
    Ok((record, cmd))
}

/// Starts the VMM and waits for its guest agent, once a boot permit is free.
pub(super) async fn start_vm(
    inner: &Inner,
    cmd: &VmmCommand,
) -> (Result<Vm, SandboxError>, BootTimes) {
    let queued = Instant::now();
    // The semaphore is never closed; without a permit the boot would just go ahead.
    let _permit = inner.boots.acquire().await.ok();
    let started = Instant::now();
    let vm = Vm::boot(
        cmd,
        Duration::from_secs(inner.settings.vm.boot_timeout_secs),
    )
    .await;
    let times = BootTimes {
        queued: started - queued,
        booted: started.elapsed(),
    };
    (vm, times)
}

/// A pod in a fresh VM. The guest boots while the CNI plugins run: neither needs the
/// other until ConfigureGuest.
pub(super) async fn boot(
    inner: &Inner,
    id: &str,
    paths: &PodPaths,
    config: PodConfig,
    size: (u32, u64),
    network: Option<NetworkConfig>,
) -> Result<Arc<Pod>, RuntimeError> {
    let (mut record, cmd) = prepare(
        inner,
        id,
        paths,
        config.clone(),
        size,
        PodPhase::Creating,
        network,
    )
    .await?;
    let booting = start_vm(inner, &cmd);
    let planned = record.network.clone();
    let (networks, pod_config) = (&inner.network, &config);
    let attaching = async move {
        match planned {
            Some(net) => {
                Some(network_step(networks, id, pod_config, net, PodNetworks::attach).await)
            }
            None => None,
        }
    };
    tokio::pin!(booting, attaching);
    let ((vm, times), attached) = tokio::select! {
        b = &mut booting => (b, attaching.await),
        a = &mut attaching => {
            // A failed ADD does not wait for the guest: the boot is dropped, and the
            // VMM, if it was started, killed.
            if let Some((net, Err(e))) = a {
                kill_unfinished(paths).await;
                record.network = Some(net);
                if let Err(w) = store::write_json(&paths.record(), &record) {
                    tracing::warn!(pod = %id, "recording the failed ADD: {w}");
                }
                return Err(e.into());
            }
            (booting.await, a)
        }
    };
    let mut failed: Option<RuntimeError> = None;
    if let Some((net, result)) = attached {
        record.network = Some(net);
        if let Err(e) = store::write_json(&paths.record(), &record) {
            failed = Some(e.into());
        }
        if let Err(e) = result {
            failed = Some(e.into());
        }
    }
    let vm = match (vm, failed) {
        (Ok(vm), None) => vm,
        (Ok(vm), Some(e)) => {
            vm.kill().await;
            return Err(e);
        }
        (Err(e), _) => return Err(e.into()),
    };
    finish(paths, record, vm, Some(times)).await
}

/// A pod in a pre-booted VM: its record takes the pod's config, then ADD (into the
/// namespace the VM's tap already sits in) and ConfigureGuest. On failure the VM is
/// killed; the caller undoes the rest from the record, as for [`boot`].
pub(super) async fn adopt(
    inner: &Inner,
    warm: WarmVm,
    config: PodConfig,
    network: Option<NetworkConfig>,
) -> Result<Arc<Pod>, RuntimeError> {
    let WarmVm {
        paths,
        mut record,
        vm,
        ..
    } = warm;
    let result = async {
        record.config = config.clone();
        record.created_at_ns = now_ns();
        record.phase = PodPhase::Creating;
        if let (Some(net), Some(current)) = (record.network.as_mut(), network) {
            // The configuration in force now, not when the VM booted.
            net.network = current;
        }
        store::write_json(&paths.record(), &record)?;
        if let Some(net) = record.network.take() {
            let (net, result) = network_step(
                &inner.network,
                &record.id,
                &config,
                net,
                PodNetworks::attach,
            )
            .await;
            record.network = Some(net);
            store::write_json(&paths.record(), &record)?;
            result?;
        }
        Ok::<(), RuntimeError>(())
    }
    .await;
    if let Err(e) = result {
        vm.kill().await;
        return Err(e);
    }
    finish(&paths, record, vm, None).await
}

/// ConfigureGuest, then the pod is ready.
async fn finish(
    paths: &PodPaths,
    mut record: PodRecord,
    vm: Vm,
    times: Option<BootTimes>,
) -> Result<Arc<Pod>, RuntimeError> {
    let configure_start = Instant::now();
    if let Err(e) = configure(&vm, &record.config, record.network.as_ref()).await {
        vm.kill().await;
        return Err(e);
    }
    tracing::info!(
        pod = %record.id,
        warm = times.is_none(),
        queue_ms = times.as_ref().map(|t| t.queued.as_millis()),
        boot_ms = times.as_ref().map(|t| t.booted.as_millis()),
        attach_ms = record.network.as_ref().map(|n| n.attach_ms),
        configure_ms = configure_start.elapsed().as_millis(),
        "guest up"
    );
    record.phase = PodPhase::Ready;
    record.vmm_pid = Some(vm.pid);
    if let Err(e) = store::write_json(&paths.record(), &record) {
        vm.kill().await;
        return Err(e.into());
    }
    if let Some(net) = &record.network {
        tracing::info!(pod = %record.id, ips = ?net.ips(), "pod network attached");
    }
    Ok(Arc::new(Pod {
        id: record.id.clone(),
        paths: paths.clone(),
        record: Mutex::new(record),
        vm: Mutex::new(Some(vm)),
        op: tokio::sync::Mutex::new(()),
    }))
}

/// Kills the VMM of a boot that was abandoned midway, if it got started, and waits
/// (up to 5 s) until it is gone.
async fn kill_unfinished(paths: &PodPaths) {
    let Some(pid) = vmm::find(&paths.control()) else {
        return;
    };
    vmm::signal(pid, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..100 {
        if !vmm::alive(pid, &paths.control()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
