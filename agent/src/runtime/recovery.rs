//! Re-adopting pods after a restart (including `kill -9`): the persisted records say
//! which pods and containers exist; running VMMs are found by pid and control socket,
//! their guests asked for the containers' states; log copying resumes from the
//! persisted offsets. A VMM that died meanwhile leaves its containers exited with
//! reason `VMExited`. Pods caught half-created are torn down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmlet_cri::runtime::ContainerState;
use vmlet_proto::agent as pb;

use super::container::{apply_exit, start_log_copy, watch_exit};
use super::launch::{release_network, remove_files};
use super::pod::{vm_gone, vmm_end, watch_vm, VM_EXITED};
use super::state::{Container, Inner, Pod};
use super::util::lock;
use crate::logs::LogSink;
use crate::sandbox::{guest, Vm};
use crate::store::{self, LogRecord, PodPaths, PodPhase, PodRecord};

/// How long a re-adopted guest may take to answer.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Loads every recorded pod. Failures are logged per pod: one bad pod does not keep
/// the daemon from serving the others.
pub(super) async fn recover(inner: &Arc<Inner>) {
    let s = &inner.settings;
    let ids = match store::pod_ids(&s.state_dir) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!("cannot list recorded pods: {e}");
            return;
        }
    };
    for id in ids {
        let paths = PodPaths::new(&s.state_dir, &s.runtime_dir, &id);
        let record: PodRecord = match store::read_json(&paths.record()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(pod = %id, "cannot read the pod record, leaving it alone: {e}");
                continue;
            }
        };
        if matches!(record.phase, PodPhase::Creating | PodPhase::Warm) {
            if record.phase == PodPhase::Warm {
                tracing::info!(pod = %id, "removing a warm VM of the previous daemon");
            } else {
                tracing::warn!(pod = %id, "pod was being created when the daemon stopped: removing it");
            }
            inner.vms.kill_stray(&paths.control()).await;
            match release_network(inner, &record, true).await {
                Ok(()) => remove_files(&paths),
                // The record stays, so that the next start tries again.
                Err(e) => tracing::error!(pod = %id, "undoing the pod's network: {e}"),
            }
            continue;
        }
        if let Err(e) = recover_pod(inner, paths, record).await {
            tracing::error!(pod = %id, "cannot recover the pod's containers: {e}");
        }
    }
}

async fn recover_pod(
    inner: &Arc<Inner>,
    paths: PodPaths,
    record: PodRecord,
) -> Result<(), store::StoreError> {
    let containers = store::container_records(&paths)?;
    let pod = Arc::new(Pod {
        id: record.id.clone(),
        paths: paths.clone(),
        record: Mutex::new(record.clone()),
        vm: Mutex::new(None),
        op: tokio::sync::Mutex::new(()),
    });
    {
        let mut t = lock(&inner.tables);
        t.pod_names
            .insert(record.config.metadata.clone(), pod.id.clone());
        t.pods.insert(pod.id.clone(), pod.clone());
    }
    let mut adopted = Vec::new();
    for rec in containers {
        let log: LogRecord = store::read_json(&paths.log(&rec.id)).unwrap_or_default();
        let lease = match inner.images.lease(&rec.image_id) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(container = %rec.id, "image lease: {e}");
                None
            }
        };
        let path = (!rec.log_path.is_empty()).then(|| rec.log_path.clone().into());
        let sink = match LogSink::open(path, log.log_len) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(container = %rec.id, "{e}");
                LogSink::none()
            }
        };
        let c = Arc::new(Container {
            id: rec.id.clone(),
            pod: pod.clone(),
            record: Mutex::new(rec.clone()),
            _lease: lease,
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
            log_task: Mutex::new(None),
            exit_task: Mutex::new(None),
            log_done: tokio::sync::watch::Sender::new(log.done),
        });
        {
            let mut t = lock(&inner.tables);
            t.container_names.insert(
                (pod.id.clone(), rec.config.name.clone(), rec.config.attempt),
                rec.id.clone(),
            );
            t.containers.insert(rec.id.clone(), c.clone());
        }
        adopted.push((c, log));
    }
    if record.phase != PodPhase::Ready {
        return Ok(());
    }
    let vm = match record.vmm_pid {
        Some(pid) => {
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
        None => Err(crate::sandbox::SandboxError::VmmExited(
            "no pid recorded".into(),
        )),
    };
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            tracing::warn!(pod = %pod.id, "the pod's VM is gone: {e}");
            // Alive but its guest does not answer: no use keeping it.
            inner.vms.kill_stray(&paths.control()).await;
            let how = vmm_end(&paths, crate::sandbox::VmmExit::Unknown);
            vm_gone(
                inner,
                &pod,
                VM_EXITED,
                &format!(
                    "the pod's VM exited while vmletd was not running ({how}); \
                     the container's exit status is unknown"
                ),
            );
            return Ok(());
        }
    };
    tracing::info!(pod = %pod.id, pid = vm.pid, "re-adopted the pod's VM");
    *lock(&pod.vm) = Some(vm.clone());
    let listed = vm
        .client
        .clone()
        .list_containers(guest::req(pb::ListContainersRequest {}, guest::CALL))
        .await
        .map(|r| r.into_inner().containers);
    for (c, log) in adopted {
        match &listed {
            Ok(listed) => reconcile(inner, &c, &vm, log, listed),
            // A guest that does not answer now says nothing about its containers:
            // they keep their recorded state, and the watchers find out.
            Err(e) => {
                tracing::warn!(pod = %pod.id, container = %c.id, "guest ListContainers: {e}");
                if lock(&c.record).state == ContainerState::Running {
                    if !log.done {
                        start_log_copy(&c, &vm, log);
                    }
                    watch_exit(inner.clone(), c.clone(), vm.clone());
                }
            }
        }
    }
    watch_vm(inner.clone(), pod);
    Ok(())
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
