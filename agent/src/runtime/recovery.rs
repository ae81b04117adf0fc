//! Re-adopting pods after a restart (including `kill -9`): the persisted records say
//! which pods and containers exist; running VMMs are found by pid and control socket,
//! their guests asked for the containers' states; log copying resumes from the
//! persisted offsets. A VMM that died meanwhile leaves its containers exited with
//! reason `VMExited`. Pods caught half-created are torn down.
//!
//! The records are read before the CRI socket is served, so every pod and container
//! is listed from the first call on (as recorded), and VMs that never became pods are
//! undone by then; the pods' VMs are taken over in the background, all at once. Calls that act on a pod wait until it is taken over
//! (see [`Pod::settled`]). A VMM that runs but whose guest does not answer is not
//! killed: its containers are `Unknown` (not exited) and taking it over is tried
//! again, with growing pauses, for as long as the VMM runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmlet_cri::runtime::ContainerState;
use vmlet_proto::agent as pb;

use super::container::{apply_exit, remove_in_guest, start_log_copy, watch_exit};
use super::launch::{release_network, remove_files};
use super::pod::{vm_gone, vmm_end, watch_vm, VM_EXITED};
use super::state::{Container, Inner, Pod};
use super::util::lock;
use crate::logs::{self, LogSink};
use crate::sandbox::{guest, SandboxError, Vm};
use crate::store::{self, ContainerRecord, LogRecord, PodPaths, PodPhase, PodRecord};
use crate::volumes::PodVolumes;

/// How long a re-adopted guest may take to answer.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest pause before a guest that did not answer is tried again.
const READOPT_FIRST: Duration = Duration::from_secs(1);
const READOPT_MAX: Duration = Duration::from_secs(60);
/// Tries before giving up on a guest that does not answer (about an hour): each failed
/// try leaves the hypervisor watching the VMM once more. The pod then stays with its
/// containers unknown until it is stopped.
const READOPT_TRIES: u32 = 64;

/// Loads every recorded pod and starts taking their VMs over in the background; VMs
/// that never became pods (half-created pods, warm VMs) are undone before this
/// returns, all at once, so that no call sees their namespaces or addresses. Failures
/// are logged per pod: one bad pod does not keep the daemon from serving the others.
pub(super) async fn recover(inner: &Arc<Inner>) {
    let s = &inner.settings;
    let ids = match store::pod_ids(&s.state_dir) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!("cannot list recorded pods: {e}");
            return;
        }
    };
    let mut unfinished = Vec::new();
    for id in ids {
        let paths = PodPaths::new(&s.state_dir, &s.runtime_dir, &id);
        let record: PodRecord = match store::read_json(&paths.record()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(pod = %id, "cannot read the pod record, leaving it alone: {e}");
                continue;
            }
        };
        if let Some(j) = record.jail {
            // Its claim made again if it was lost: no other pod gets this uid.
            if let Err(e) = inner.uids.adopt(j.uid, &paths.dir) {
                tracing::error!(pod = %id, "the pod's jail uid: {e}");
            }
        }
        if matches!(record.phase, PodPhase::Creating | PodPhase::Warm) {
            unfinished.push((paths, record));
            continue;
        }
        if let Err(e) = recover_pod(inner, paths, record) {
            tracing::error!(pod = %id, "cannot recover the pod's containers: {e}");
        }
    }
    futures_util::future::join_all(
        unfinished
            .iter()
            .map(|(paths, record)| discard_unfinished(inner, paths, record)),
    )
    .await;
}

/// Marks its pod settled when dropped, however the recovery task ends.
struct Settle(Arc<Pod>);

impl Drop for Settle {
    fn drop(&mut self) {
        self.0.settled.send_replace(true);
    }
}

fn record_is_ready(pod: &Pod) -> bool {
    lock(&pod.record).phase == PodPhase::Ready
}

/// Tears down a VM that never became a pod (a warm VM, a pod caught half-created):
/// its VMM, network and files.
async fn discard_unfinished(inner: &Inner, paths: &PodPaths, record: &PodRecord) {
    if record.phase == PodPhase::Warm {
        tracing::info!(pod = %record.id, "removing a warm VM of the previous daemon");
    } else {
        tracing::warn!(pod = %record.id, "pod was being created when the daemon stopped: removing it");
    }
    inner.vms.kill_stray(&paths.control()).await;
    super::launch::teardown_share(paths).await;
    match release_network(inner, record, true).await {
        Ok(()) => remove_files(paths),
        // The record stays, so that the next start tries again.
        Err(e) => tracing::error!(pod = %record.id, "undoing the pod's network: {e}"),
    }
}

/// A recorded pod and its containers back in the tables; for a ready pod, a task
/// that re-adopts its VM and reconciles its containers with what its guest says.
fn recover_pod(
    inner: &Arc<Inner>,
    paths: PodPaths,
    record: PodRecord,
) -> Result<(), store::StoreError> {
    let containers = store::container_records(&paths)?;
    let ready = record.phase == PodPhase::Ready;
    let vmm_pid = record.vmm_pid;
    let pod = enter_pod(inner, paths, record, !ready);
    let adopted: Vec<_> = containers
        .into_iter()
        .map(|rec| enter_container(inner, &pod, rec))
        .collect();
    if ready {
        let task = tokio::spawn(take_over(inner.clone(), pod, vmm_pid, adopted));
        lock(&inner.recovery).push(task);
    }
    Ok(())
}

/// Takes a ready pod's VM over; the pod is settled once this knows how its VM is.
async fn take_over(
    inner: Arc<Inner>,
    pod: Arc<Pod>,
    vmm_pid: Option<u32>,
    adopted: Vec<(Arc<Container>, LogRecord)>,
) {
    let settle = Settle(pod.clone());
    let Some(pid) = vmm_pid else {
        vmm_lost(
            &inner,
            &pod,
            SandboxError::VmmExited("no pid recorded".into()),
        )
        .await;
        return;
    };
    match adopt(&inner, &pod, pid).await {
        Ok(vm) => resume(&inner, &pod, vm, adopted).await,
        Err(SandboxError::GuestTimeout { timeout, last }) => {
            tracing::warn!(pod = %pod.id, "the pod's VMM runs but its guest did not answer within {timeout:?} ({last}): its containers are unknown until it does");
            let recorded = mark_unknown(&adopted);
            drop(settle);
            tokio::spawn(readopt_later(inner, pod, pid, adopted, recorded));
        }
        Err(e) => vmm_lost(&inner, &pod, e).await,
    }
}

/// Sets the containers recorded running or created to `Unknown` in memory (not on
/// disk); returns their recorded states.
fn mark_unknown(adopted: &[(Arc<Container>, LogRecord)]) -> Vec<ContainerState> {
    adopted
        .iter()
        .map(|(c, _)| {
            let mut r = lock(&c.record);
            let recorded = r.state;
            if matches!(recorded, ContainerState::Running | ContainerState::Created) {
                r.state = ContainerState::Unknown;
            }
            recorded
        })
        .collect()
}

/// Tries again, with growing pauses, to take over a VMM whose guest did not answer,
/// for as long as the pod is ready and the VMM runs.
async fn readopt_later(
    inner: Arc<Inner>,
    pod: Arc<Pod>,
    pid: u32,
    adopted: Vec<(Arc<Container>, LogRecord)>,
    recorded: Vec<ContainerState>,
) {
    let mut pause = READOPT_FIRST;
    for _ in 0..READOPT_TRIES {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(READOPT_MAX);
        if inner.pod(&pod.id).is_err() || !record_is_ready(&pod) {
            return;
        }
        let vm = match adopt(&inner, &pod, pid).await {
            Ok(vm) => vm,
            Err(SandboxError::GuestTimeout { .. }) => continue,
            Err(e) => {
                let _op = pod.op.lock().await;
                if record_is_ready(&pod) {
                    vmm_lost(&inner, &pod, e).await;
                }
                return;
            }
        };
        let _op = pod.op.lock().await;
        if inner.pod(&pod.id).is_err() || !record_is_ready(&pod) {
            // Stopped or removed meanwhile: nothing to take over.
            vm.kill().await;
            return;
        }
        tracing::info!(pod = %pod.id, "the pod's guest answers again");
        for ((c, _), state) in adopted.iter().zip(recorded) {
            let mut r = lock(&c.record);
            if r.state == ContainerState::Unknown {
                r.state = state;
            }
        }
        resume(&inner, &pod, vm, adopted).await;
        return;
    }
    tracing::error!(pod = %pod.id, "the pod's guest never answered again: giving up; its containers stay unknown until the pod is stopped");
}

/// The pod's VM is back: its containers reconciled and followed, the VM watched.
async fn resume(
    inner: &Arc<Inner>,
    pod: &Arc<Pod>,
    vm: Vm,
    adopted: Vec<(Arc<Container>, LogRecord)>,
) {
    tracing::info!(pod = %pod.id, pid = vm.pid, "re-adopted the pod's VM");
    *lock(&pod.vm) = Some(vm.clone());
    resume_containers(inner, pod, &vm, adopted).await;
    watch_vm(inner.clone(), pod.clone());
}

/// The pod in memory and in the tables, without a VM yet (`settled`: nothing more to
/// take over).
fn enter_pod(inner: &Inner, paths: PodPaths, record: PodRecord, settled: bool) -> Arc<Pod> {
    let metadata = record.config.metadata.clone();
    let shared_fs = record.shared_fs;
    let volumes = Arc::new(PodVolumes::new(record.config.security.userns.clone()));
    let pod = Arc::new(Pod {
        id: record.id.clone(),
        paths,
        record: Mutex::new(record),
        vm: Mutex::new(None),
        op: tokio::sync::Mutex::new(()),
        volumes,
        settled: tokio::sync::watch::Sender::new(settled),
    });
    if shared_fs {
        let share = crate::volumes::Share::new(&pod.paths.dir, &pod.paths.run_dir);
        if share.find_daemon().is_none() && record_is_ready(&pod) {
            tracing::warn!(pod = %pod.id, "the pod's virtiofsd is gone: its shared volumes no longer work");
        }
        pod.volumes.set_share(share);
    }
    let mut t = lock(&inner.tables);
    t.pod_names.insert(metadata, pod.id.clone());
    t.pods.insert(pod.id.clone(), pod.clone());
    pod
}

/// A recorded container in memory and in the tables, with its image lease and its
/// log file reopened at the recorded length; returns it with its log position.
fn enter_container(
    inner: &Inner,
    pod: &Arc<Pod>,
    rec: ContainerRecord,
) -> (Arc<Container>, LogRecord) {
    let log: Option<LogRecord> = match store::read_json(&pod.paths.log(&rec.id)) {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::warn!(container = %rec.id, "log position lost ({e}): the log is kept as it is and copying starts over from what the guest still holds");
            None
        }
    };
    let images = std::iter::once(rec.image_id.clone()).chain(
        rec.volumes
            .iter()
            .filter(|p| p.class == crate::volumes::Class::Image)
            .map(|p| p.image.clone()),
    );
    let leases = images
        .filter_map(|image| match inner.images.lease(&image) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(container = %rec.id, "image lease of {image}: {e}");
                None
            }
        })
        .collect();
    let path = (!rec.log_path.is_empty()).then(|| rec.log_path.clone().into());
    let opened = match &log {
        Some(log) => LogSink::open(path, log.log_len),
        // Never cut a log whose position is unknown.
        None => LogSink::open_as_is(path),
    };
    let log = log.unwrap_or_default();
    let sink = match opened {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(container = %rec.id, "{e}");
            LogSink::none()
        }
    };
    let key = (pod.id.clone(), rec.config.name.clone(), rec.config.attempt);
    let c = Arc::new(Container {
        id: rec.id.clone(),
        pod: pod.clone(),
        record: Mutex::new(rec),
        _leases: leases,
        log_health: sink.health(),
        sink: Arc::new(tokio::sync::Mutex::new(sink)),
        log_task: Mutex::new(None),
        exit_task: Mutex::new(None),
        log_done: tokio::sync::watch::Sender::new(log.done),
        output: logs::output_tap(),
    });
    let mut t = lock(&inner.tables);
    t.container_names.insert(key, c.id.clone());
    t.containers.insert(c.id.clone(), c.clone());
    (c, log)
}

/// Takes over the pod's VMM `pid`.
async fn adopt(inner: &Inner, pod: &Pod, pid: u32) -> Result<Vm, SandboxError> {
    let paths = &pod.paths;
    inner
        .vms
        .adopt(
            pid,
            &paths.control(),
            &paths.vsock(),
            &paths.vmm_exit(),
            ADOPT_TIMEOUT,
        )
        .await
}

/// The pod's VMM is gone (or cannot be talked to at all): the pod is not ready and
/// its containers exited.
async fn vmm_lost(inner: &Inner, pod: &Pod, e: SandboxError) {
    let paths = &pod.paths;
    tracing::warn!(pod = %pod.id, "the pod's VM is gone: {e}");
    inner.vms.kill_stray(&paths.control()).await;
    let how = vmm_end(paths, crate::sandbox::VmmExit::Unknown);
    vm_gone(
        inner,
        pod,
        VM_EXITED,
        &format!(
            "the pod's VM exited while vmletd was not running ({how}); \
             the container's exit status is unknown"
        ),
    );
}

/// Reconciles the recorded containers with the guest's list, resuming log copies and
/// exit watches, and removes the containers the guest has that no record knows. A
/// guest that cannot list its containers now says nothing about them: they keep
/// their recorded state, and the watchers find out.
async fn resume_containers(
    inner: &Arc<Inner>,
    pod: &Pod,
    vm: &Vm,
    adopted: Vec<(Arc<Container>, LogRecord)>,
) {
    for (c, _) in &adopted {
        let planned = lock(&c.record).volumes.clone();
        pod.volumes
            .adopt(vm, &pod.id, &c.id, &planned, inner.settings.volumes);
    }
    let listed = vm
        .client
        .clone()
        .list_containers(guest::req(pb::ListContainersRequest {}, guest::CALL))
        .await
        .map(|r| r.into_inner().containers);
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(pod = %pod.id, "guest ListContainers: {e}");
            for (c, log) in adopted {
                follow(inner, &c, vm, log);
            }
            return;
        }
    };
    for s in listed
        .iter()
        .filter(|s| !adopted.iter().any(|(c, _)| c.id == s.container_id))
    {
        remove_stray(pod, vm, &s.container_id).await;
    }
    for (c, log) in adopted {
        reconcile(inner, &c, vm, log, &listed);
    }
}

/// Keeps following a container recorded running whose guest state is unknown.
fn follow(inner: &Arc<Inner>, c: &Arc<Container>, vm: &Vm, log: LogRecord) {
    if lock(&c.record).state == ContainerState::Running {
        if !log.done {
            start_log_copy(c, vm, log);
        }
        watch_exit(inner.clone(), c.clone(), vm.clone());
    }
}

/// Removes a container the guest runs but no record knows (its CreateContainer never
/// returned, or its record was lost): as containerd would not know it either, no CRI
/// call could ever reach it.
async fn remove_stray(pod: &Pod, vm: &Vm, id: &str) {
    tracing::warn!(pod = %pod.id, container = %id, "the guest has a container no record knows: removing it");
    remove_in_guest(vm, id).await;
}

fn reconcile(
    inner: &Arc<Inner>,
    c: &Arc<Container>,
    vm: &Vm,
    log: LogRecord,
    listed: &[pb::ContainerStatus],
) {
    let state = lock(&c.record).state;
    let in_guest = listed.iter().find(|s| s.container_id == c.id);
    match in_guest {
        Some(g) => {
            if !log.done {
                start_log_copy(c, vm, log);
            }
            let main = g.main.clone().unwrap_or_default();
            if main.state == pb::ProcessState::Exited as i32 {
                apply_exit(inner, c, &main);
            } else if state == ContainerState::Running
                || main.state == pb::ProcessState::Running as i32
            {
                if state != ContainerState::Running {
                    lock(&c.record).state = ContainerState::Running;
                    let _ = c.save();
                }
                watch_exit(inner.clone(), c.clone(), vm.clone());
            }
        }
        None if matches!(state, ContainerState::Created | ContainerState::Running) => {
            apply_exit(
                inner,
                c,
                &pb::ProcessStatus {
                    exit_code: 255,
                    reason: "Unknown".into(),
                    message: "the guest no longer knows the container".into(),
                    ..Default::default()
                },
            );
        }
        None => {}
    }
}
