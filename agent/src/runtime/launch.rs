//! Making a pod's VM: its record, network namespace and tap, disks and VMM
//! ([`prepare`]), the boot ([`start_vm`], at most `vm.max_concurrent_boots` at once),
//! and the pod's own part: CNI ADD and ConfigureGuest ([`boot`] for a fresh VM, which
//! boots while ADD runs; [`adopt`] for a pre-booted one from the warm pool).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmlet_cri::runtime::PodConfig;
use vmlet_proto::agent as pb;
use vmlet_vmm_api::config::SerialLogLimits;

use super::deadline::Deadline;
use super::error::RuntimeError;
use super::pool::WarmVm;
use super::state::{Inner, Pod, Settings};
use super::template::{Inputs, Shape, Template, Templates};
use super::util::now_ns;
use crate::metrics::Phase;
use crate::network::cni::NetworkConfig;
use crate::network::pod::{NetworkError, PodNetRecord, PodNetworks};
use crate::sandbox::cgroup::{self, PodCgroup};
use crate::sandbox::jail::{self, JailSpec};
use crate::sandbox::{disk, guest, SandboxError, Vm, VmmCommand};
use crate::store::{self, JailRecord, PodPaths, PodPhase, PodRecord, SlotRecord};
use crate::volumes::share::{self, Share};
use crate::volumes::PodVolumes;

/// How long a boot waited for its turn and how long it took.
pub(super) struct BootTimes {
    pub queued: Duration,
    pub booted: Duration,
    /// The VM was restored from a template, not booted.
    pub restored: bool,
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
    let handler = s.handler(&config.runtime_handler)?;
    // Checked before anything is made: the VMM's own error would name neither.
    for (what, file) in [("kernel", handler.kernel), ("initramfs", handler.initramfs)] {
        if !file.exists() {
            return Err(RuntimeError::Precondition(format!(
                "the guest {what} {} of runtime handler {:?} does not exist",
                file.display(),
                config.runtime_handler
            )));
        }
    }
    for dir in [&paths.dir, &paths.containers(), &paths.run_dir] {
        store::create_private_dir(dir)?;
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
        shared_fs: s.vm.shared_fs_for(&config.annotations),
        jail: None,
        cgroup: None,
    };
    if s.jail.enabled {
        let uid = inner.uids.claim(&paths.dir)?;
        record.jail = Some(JailRecord { uid, gid: uid });
    }
    // Recorded before it is made: a daemon that dies from here on removes it.
    let cgroup_rel = match &s.cgroups.root {
        Some(root) => {
            let rel = cgroup::pod_path(s.cgroups.driver, &config.cgroup_parent, id)?;
            record.cgroup = Some(PodCgroup {
                dir: root.join(&rel),
                registry: cgroup_registry(s),
            });
            Some((root.clone(), rel))
        }
        None => None,
    };
    store::write_json(&paths.record(), &record)?;
    if let Some((root, rel)) = cgroup_rel {
        let limits = cgroup::Limits::of_pod(size.1, config.cpu_millis);
        let registry = cgroup_registry(s);
        let made =
            tokio::task::spawn_blocking(move || cgroup::create(&root, &rel, &limits, &registry))
                .await
                .map_err(|e| {
                    RuntimeError::Interrupted(format!("making the pod's cgroup: {e}"))
                })??;
        record.cgroup = Some(made);
        store::write_json(&paths.record(), &record)?;
    }
    if let Some(net) = record.network.take() {
        let (net, result) = network_step(&inner.network, id, &config, net, |n, id, _, rec| {
            n.prepare(id, rec)
        })
        .await;
        record.network = Some(net);
        store::write_json(&paths.record(), &record)?;
        result?;
    }
    let mut fs = Vec::new();
    if record.shared_fs {
        let share = Share::new(&paths.dir, &paths.run_dir);
        let started = match share.prepare() {
            Ok(()) => {
                let procs = record.cgroup.as_ref().map(PodCgroup::procs);
                share
                    .start_daemon(
                        &s.vm.virtiofsd,
                        &paths.dir.join("virtiofsd.log"),
                        procs.as_deref(),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let pid = started.map_err(|e| {
            RuntimeError::Invalid(format!("the pod's shared file system (vm.shared_fs): {e}"))
        })?;
        tracing::debug!(pod = %id, pid, "virtiofsd serving the pod's shared directory");
        fs.push((share::FS_TAG.to_owned(), share.socket));
    }
    // Created 0600 up front: the VMM appends to them and the files keep the mode.
    for log in [paths.console(), paths.vmm_log()] {
        store::create_private_file(&log)?;
    }
    disk::make_scratch(&paths.scratch(), s.vm.scratch_mib).await?;
    disk::make_placeholder(&paths.placeholder())?;
    for disk in [paths.scratch(), paths.placeholder()] {
        store::create_private_file(&disk)?;
    }
    let mut drives = vec![("scratch".to_owned(), paths.scratch(), false)];
    drives.extend(
        slots
            .iter()
            .map(|sl| (sl.serial.clone(), paths.placeholder(), true)),
    );
    let jail = match record.jail {
        Some(j) => Some(jail_spec(s, paths, j, &fs)?),
        None => None,
    };
    let cmd = VmmCommand {
        binary: s.vmm.clone(),
        kernel: handler.kernel.to_owned(),
        initramfs: handler.initramfs.to_owned(),
        kernel_args: handler.kernel_args.to_owned(),
        free_page_reporting: s.vm.free_page_reporting,
        vcpus: size.0,
        mem_mib: size.1,
        drives,
        vsock: paths.vsock(),
        control: paths.control(),
        console: paths.console(),
        console_limits: SerialLogLimits {
            head_bytes: s.vm.console_log_head_bytes,
            tail_bytes: s.vm.console_log_tail_bytes,
        },
        log: paths.vmm_log(),
        exit_record: paths.vmm_exit(),
        netns: record.network.as_ref().map(|n| n.netns.clone()),
        nets: record
            .network
            .iter()
            .map(|n| (n.tap.clone(), n.guest_mac.clone()))
            .collect(),
        fs,
        jail,
        cgroup: record.cgroup.as_ref().map(PodCgroup::procs),
        restore: None,
        snapshot_dir: None,
    };
    Ok((record, cmd))
}

/// The pod's files its jailed VMM writes or reads handed to its uid, the jail's root
/// directory made, and the jail's spec.
fn jail_spec(
    s: &Settings,
    paths: &PodPaths,
    j: JailRecord,
    fs: &[(String, PathBuf)],
) -> Result<JailSpec, SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    let (uid, gid) = (j.uid, j.gid);
    jail::give(&paths.run_dir, uid, gid, 0o700)?;
    jail::give(&paths.scratch(), uid, gid, 0o600)?;
    jail::give(&paths.placeholder(), uid, gid, 0o600)?;
    jail::give_new_file(&paths.console(), uid, gid)?;
    jail::give_new_file(&paths.vmm_exit(), uid, gid)?;
    for (_, socket) in fs {
        jail::give(socket, uid, gid, 0o600)?;
    }
    let root = paths.dir.join("jail");
    match std::fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(SandboxError::Io {
                op: "create",
                path: root,
                source,
            })
        }
    }
    Ok(JailSpec {
        uid,
        gid,
        root,
        library_dirs: s.jail.library_dirs.clone(),
        max_open_files: s.jail.max_open_files,
        pid_namespace: s.jail.pid_namespace,
        // The scratch disk is the largest file the VMM writes.
        max_file_bytes: s.vm.scratch_mib.max(64).saturating_mul(1 << 20),
    })
}

/// Starts the VMM and waits for its guest agent, once a boot permit is free, within
/// what is left of `deadline` (the wait for a permit and the boot both end with it).
pub(super) async fn start_vm(
    inner: &Inner,
    cmd: &VmmCommand,
    deadline: Deadline,
) -> (Result<Vm, RuntimeError>, BootTimes) {
    let queued = Instant::now();
    let restored = cmd.restore.is_some();
    let times = |started: Instant| BootTimes {
        queued: started - queued,
        booted: started.elapsed(),
        restored,
    };
    let acquire = inner.boots.acquire();
    // The semaphore is never closed; without a permit the boot would just go ahead.
    let _permit = match deadline.at() {
        Some(at) => match tokio::time::timeout_at(at.into(), acquire).await {
            Ok(permit) => permit.ok(),
            Err(_) => {
                let e = RuntimeError::Timeout(format!(
                    "the call's deadline passed after {} ms waiting for a boot slot \
                     (vm.max_concurrent_boots = {})",
                    queued.elapsed().as_millis(),
                    inner.settings.vm.max_concurrent_boots
                ));
                return (Err(e), times(Instant::now()));
            }
        },
        None => acquire.await.ok(),
    };
    let started = Instant::now();
    let limit = Duration::from_secs(inner.settings.vm.boot_timeout_secs);
    let mut vm = inner.vms.boot(cmd, deadline.cap(limit)).await;
    if let (Ok(v), true) = (&vm, restored) {
        // Before anything else is asked of it: the guest is a copy of the template.
        let mut client = v.client.clone();
        if let Err(e) = guest::restored(&mut client, deadline.cap(guest::CALL)).await {
            v.kill().await;
            vm = Err(e);
        }
    }
    let times = times(started);
    inner.settings.metrics.boot(vm.is_ok());
    let vm = match vm {
        Ok(vm) => {
            inner.boot_estimate.record(times.booted);
            Ok(vm)
        }
        // The boot was cut short by the caller's deadline, not by the boot timeout.
        Err(e @ SandboxError::GuestTimeout { .. }) if deadline.cap(limit) < limit => {
            Err(RuntimeError::Timeout(format!(
                "the call's deadline ended the boot after {} ms: {e}",
                times.booted.as_millis()
            )))
        }
        Err(e) => Err(e.into()),
    };
    (vm, times)
}

/// The template key of a VM of `shape`, and the template if it is made; None when
/// its handler has templates off (or they cannot be keyed: logged).
pub(super) fn template_of(inner: &Inner, shape: &Shape) -> Option<(String, Option<Template>)> {
    match template_key(&inner.templates, &inner.settings, shape) {
        Ok(Some(key)) => {
            let template = inner.templates.find(&key);
            Some((key, template))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("a VM of {shape:?} starts without a template: {e}");
            None
        }
    }
}

/// The key of `shape`'s template, None when its handler has templates off.
pub(super) fn template_key(
    templates: &Templates,
    s: &Settings,
    shape: &Shape,
) -> Result<Option<String>, RuntimeError> {
    let handler = s.handler(&shape.handler)?;
    if !handler.templates {
        return Ok(None);
    }
    let inputs = Inputs {
        kernel: handler.kernel,
        initramfs: handler.initramfs,
        vmm: &s.vmm,
        kernel_args: handler.kernel_args,
        image_slots: s.vm.image_slots,
        scratch_mib: s.vm.scratch_mib,
        free_page_reporting: s.vm.free_page_reporting,
    };
    templates.key(&inputs, shape).map(Some)
}

/// `cmd` restoring from `t`: its card gets the MAC the template's guest has.
fn restoring(cmd: &VmmCommand, t: &Template) -> VmmCommand {
    let mut cmd = cmd.clone();
    cmd.restore = Some(t.dir.clone());
    if let (Some(mac), Some(net)) = (&t.guest_mac, cmd.nets.first_mut()) {
        net.1 = mac.clone();
    }
    cmd
}

/// Starts the VM of `cmd` restored from `template` if there is one, else booted. A
/// template that fails to restore is removed (the next VM of its shape makes it
/// again) and the VM boots instead, if the deadline allows: a template never fails
/// a pod by itself. Returns the template restored from.
pub(super) async fn start_or_restore(
    inner: &Inner,
    cmd: &VmmCommand,
    template: Option<&(String, Option<Template>)>,
    deadline: Deadline,
) -> (Result<Vm, RuntimeError>, BootTimes, Option<Template>) {
    if let Some((key, Some(t))) = template {
        let (vm, times) = start_vm(inner, &restoring(cmd, t), deadline).await;
        match vm {
            Ok(vm) => return (Ok(vm), times, Some(t.clone())),
            Err(e @ RuntimeError::Timeout(_)) => return (Err(e), times, None),
            Err(e) => {
                tracing::warn!(template = %key, "restoring from the template failed ({e}): booting instead");
                inner.templates.discard(key);
                inner.vms.kill_stray(&cmd.control).await;
            }
        }
    }
    let (vm, times) = start_vm(inner, cmd, deadline).await;
    (vm, times, None)
}

/// The shape of a VM as templates key it.
pub(super) fn shape(config: &PodConfig, size: (u32, u64), network: bool) -> Shape {
    Shape {
        handler: config.runtime_handler.clone(),
        vcpus: size.0,
        mem_mib: size.1,
        network,
    }
}

/// A pod in a fresh VM. The guest boots while the CNI plugins run: neither needs the
/// other until ConfigureGuest. The boot and ConfigureGuest end with `deadline`.
pub(super) async fn boot(
    inner: &Inner,
    id: &str,
    paths: &PodPaths,
    config: PodConfig,
    size: (u32, u64),
    network: Option<NetworkConfig>,
    deadline: Deadline,
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
    let template = if record.shared_fs {
        None
    } else {
        template_of(inner, &shape(&config, size, record.network.is_some()))
    };
    // Boxed so that a failed ADD can drop it, which kills its VMM (`Vm::boot`).
    let mut booting = Box::pin(start_or_restore(inner, &cmd, template.as_ref(), deadline));
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
    tokio::pin!(attaching);
    let ((vm, times, restored_from), attached) = tokio::select! {
        b = &mut booting => (b, attaching.await),
        a = &mut attaching => {
            // A failed ADD does not wait for the guest: the boot is dropped, and the
            // VMM, if it was started, killed.
            if let Some((net, Err(e))) = a {
                drop(booting);
                // The VMM of the boot abandoned midway, if dropping it left one.
                inner.vms.kill_stray(&paths.control()).await;
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
    if let Some((mut net, result)) = attached {
        // ConfigureGuest finds the card by the MAC its guest has.
        if let Some(mac) = restored_from.as_ref().and_then(|t| t.guest_mac.clone()) {
            net.guest_mac = mac;
        }
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
        (Err(e), _) => return Err(e),
    };
    finish(inner, paths, record, vm, Some(times), deadline).await
}

/// A pod in a pre-booted VM: its record takes the pod's config, then ADD (into the
/// namespace the VM's tap already sits in) and ConfigureGuest. On failure the VM is
/// killed; the caller undoes the rest from the record, as for [`boot`].
/// ConfigureGuest ends with `deadline`.
pub(super) async fn adopt(
    inner: &Inner,
    warm: WarmVm,
    config: PodConfig,
    network: Option<NetworkConfig>,
    deadline: Deadline,
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
        move_cgroup(inner, &paths, &mut record)?;
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
    finish(inner, &paths, record, vm, None, deadline).await
}

/// Where vmletd lists the parent cgroups it made.
fn cgroup_registry(s: &Settings) -> PathBuf {
    s.state_dir.join("cgroup-parents")
}

/// A warm VM's processes moved from the cgroup it booted in (below the default
/// parent) to the pod's own, below the pod's `cgroup_parent` with the pod's limits;
/// the old cgroup removed.
fn move_cgroup(
    inner: &Inner,
    paths: &PodPaths,
    record: &mut PodRecord,
) -> Result<(), RuntimeError> {
    let (Some(root), Some(old)) = (&inner.settings.cgroups.root, record.cgroup.clone()) else {
        return Ok(());
    };
    let c = &record.config;
    let rel = cgroup::pod_path(inner.settings.cgroups.driver, &c.cgroup_parent, &record.id)?;
    let limits = cgroup::Limits::of_pod(record.mem_mib, c.cpu_millis);
    if root.join(&rel) == old.dir {
        cgroup::set_limits(&old.dir, &limits)?;
        return Ok(());
    }
    let new = cgroup::create(root, &rel, &limits, &cgroup_registry(&inner.settings))?;
    if let Err(e) = cgroup::move_processes(&old, &new) {
        cgroup::remove(&new);
        return Err(e.into());
    }
    record.cgroup = Some(new);
    store::write_json(&paths.record(), record)?;
    cgroup::remove(&old);
    Ok(())
}

/// ConfigureGuest, then the pod is ready.
async fn finish(
    inner: &Inner,
    paths: &PodPaths,
    mut record: PodRecord,
    vm: Vm,
    times: Option<BootTimes>,
    deadline: Deadline,
) -> Result<Arc<Pod>, RuntimeError> {
    let configure_start = Instant::now();
    let call = deadline.cap(guest::CALL);
    if let Err(e) = configure(&vm, &record.config, record.network.as_ref(), call).await {
        vm.kill().await;
        return Err(e);
    }
    let configured = configure_start.elapsed();
    let attached = record
        .network
        .as_ref()
        .map(|n| Duration::from_millis(n.attach_ms));
    tracing::info!(
        pod = %record.id,
        warm = times.is_none(),
        queue_ms = times.as_ref().map(|t| t.queued.as_millis()),
        boot_ms = times.as_ref().map(|t| t.booted.as_millis()),
        restored = times.as_ref().is_some_and(|t| t.restored),
        attach_ms = attached.map(|a| a.as_millis()),
        configure_ms = configured.as_millis(),
        "guest up"
    );
    let mut phases = Vec::with_capacity(4);
    if let Some(t) = &times {
        let start = if t.restored {
            Phase::Restore
        } else {
            Phase::Boot
        };
        phases.extend([(Phase::Queue, t.queued), (start, t.booted)]);
    }
    phases.extend(attached.map(|a| (Phase::Network, a)));
    phases.push((Phase::Configure, configured));
    record.phase = PodPhase::Ready;
    record.vmm_pid = Some(vm.pid);
    if let Err(e) = store::write_json(&paths.record(), &record) {
        vm.kill().await;
        return Err(e.into());
    }
    inner.settings.metrics.pod_started(times.is_none(), &phases);
    if let Some(net) = &record.network {
        tracing::info!(pod = %record.id, ips = ?net.ips(), "pod network attached");
    }
    let shared_fs = record.shared_fs;
    let volumes = Arc::new(PodVolumes::new(record.config.security.userns.clone()));
    let pod = Arc::new(Pod {
        id: record.id.clone(),
        paths: paths.clone(),
        record: Mutex::new(record),
        vm: Mutex::new(Some(vm)),
        op: tokio::sync::Mutex::new(()),
        volumes,
        settled: tokio::sync::watch::Sender::new(true),
    });
    if shared_fs {
        pod.volumes
            .set_share(Share::new(&pod.paths.dir, &pod.paths.run_dir));
    }
    Ok(pod)
}

/// Ends the pod's virtiofsd and unbinds its shared volumes, if it has any.
pub(super) async fn teardown_share(paths: &PodPaths) {
    let share = Share::new(&paths.dir, &paths.run_dir);
    if share.dir.exists() || share.find_daemon().is_some() {
        share.teardown().await;
    }
}

/// Removes what a pod left on disk; never a directory tree with something mounted
/// below it (a shared volume's host data could be there).
pub(super) fn remove_files(paths: &PodPaths) {
    // The pod's cgroup goes with its files (its VMM is gone by now).
    if let Ok(record) = store::read_json::<PodRecord>(&paths.record()) {
        if let Some(cg) = &record.cgroup {
            cgroup::remove(cg);
        }
    }
    for dir in [&paths.dir, &paths.run_dir] {
        let mounted = share::mounts_under(dir);
        if !mounted.is_empty() {
            tracing::error!(
                "not removing {}: still mounted below it: {mounted:?}",
                dir.display()
            );
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
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
    teardown_share(paths).await;
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

/// Hostname, network and DNS of the guest, each call within `call`. The pod's DNS
/// config (kubelet's) wins over what the CNI plugins returned.
pub(super) async fn configure(
    vm: &Vm,
    c: &PodConfig,
    net: Option<&PodNetRecord>,
    call: Duration,
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
            call,
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
            call,
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
