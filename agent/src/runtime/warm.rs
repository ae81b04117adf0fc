//! The warm pools (`vm.warm_pool`, and `warm_pool` of each RuntimeClass handler): VMs
//! of a handler's default size, with its kernel, booted ahead of need, each
//! with its pod ID, record (phase Warm), network namespace and tap already made, so
//! that RunPodSandbox of a pod that size only runs CNI ADD and ConfigureGuest (see
//! `launch::adopt`). One task per pool keeps it full, one boot at a time and only while no
//! RunPodSandbox is in progress (a boot takes CPU from pods starting); a call that
//! finds the pool empty waits for a VM that is booting only if no other call waits
//! for it already, else it boots its own.
//!
//! Warm VMs are not pods: no CRI call lists them. A daemon that exits kills them; one
//! that was killed finds their records (phase Warm) at its next start and removes
//! them, as it does half-created pods.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmlet_cri::runtime::PodConfig;

use super::deadline::Deadline;
use super::error::RuntimeError;
use super::launch::{self, prepare, undo};
use super::pool::{WarmPool, WarmVm};
use super::state::Inner;
use super::template::{Making, Shape};
use super::util::{lock, new_id};
use crate::network::cni::NetworkConfig;
use crate::sandbox::Vm;
use crate::store::{self, PodPaths, PodPhase, PodRecord};
use std::path::Path;

/// How long the refill waits while pods cannot get a network, and after a first failed
/// boot; the wait doubles with each failure in a row, up to `RETRY_MAX`.
const RETRY: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Consoles of failed warm VMs kept for diagnosis (the oldest go first).
const KEPT_CONSOLES: usize = 8;
/// How often a template's background boot looks whether pods still start.
const BACKGROUND_POLL: Duration = Duration::from_millis(200);
/// How long daemon exit waits for a warm VM that is booting.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

/// Keeps `handler`'s pool full until it is closed, booting while no pod is starting.
pub(super) async fn refill(inner: Arc<Inner>, handler: String) {
    let Some(pool) = inner.warm.of(&handler) else {
        return;
    };
    if pool.target == 0 {
        return;
    }
    let mut backoff = RETRY;
    loop {
        let notified = pool.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (dead, wanted) = {
            let mut st = lock(&pool.state);
            if st.closed {
                return;
            }
            let dead = std::mem::take(&mut st.dead);
            (dead, st.ready.len() < pool.target && st.starting == 0)
        };
        for w in dead {
            tracing::warn!(pod = %w.id, "a warm VM died; removing it");
            discard(&inner, w).await;
        }
        if !wanted {
            notified.await;
            continue;
        }
        let network = match inner.network.current() {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("warm pool waits for the pod network: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        lock(&pool.state).booting = true;
        let booted = boot_one(&inner, pool, network).await;
        let failed = booted.is_err();
        let leftover = {
            let mut st = lock(&pool.state);
            match booted {
                Ok(w) if !st.closed => {
                    tracing::info!(pod = %w.id, "warm VM ready");
                    watch_idle(&inner, &w);
                    st.ready.push_back(w);
                    None
                }
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("booting a warm VM: {e}");
                    None
                }
            }
        };
        // The daemon may be exiting: `drain` waits until `booting` is false.
        let closed = leftover.is_some();
        if let Some(w) = leftover {
            discard(&inner, w).await;
        }
        lock(&pool.state).booting = false;
        pool.changed.notify_waiters();
        if closed {
            return;
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        } else {
            backoff = RETRY;
        }
    }
}

/// Hands a warm VM whose VMM dies while it waits in the pool to the refill task, which
/// removes and replaces it.
fn watch_idle(inner: &Arc<Inner>, w: &WarmVm) {
    let (inner, vm, id, handler) = (inner.clone(), w.vm.clone(), w.id.clone(), w.handler.clone());
    tokio::spawn(async move {
        vm.wait_exit_status().await;
        if let Some(pool) = inner.warm.of(&handler) {
            pool.reap(&id);
        }
    });
}

/// Kills and removes every VM in the pool (daemon exit), after the boot in flight, if
/// any, which the refill task then removes (for at most `DRAIN_WAIT`: what is left
/// then, the next daemon removes).
pub(super) async fn drain(inner: &Inner) {
    for pool in inner.warm.iter() {
        for w in pool.close() {
            discard(inner, w).await;
        }
    }
    for pool in inner.warm.iter() {
        let waited = tokio::time::timeout(DRAIN_WAIT, async {
            loop {
                let notified = pool.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !lock(&pool.state).booting {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(handler = %pool.handler, "a warm VM still boots; the next start removes it");
        }
    }
}

async fn boot_one(
    inner: &Inner,
    pool: &WarmPool,
    network: Option<NetworkConfig>,
) -> Result<WarmVm, RuntimeError> {
    boot_spare(inner, &pool.handler, pool.size, network).await
}

/// A VM made ahead of a pod (phase Warm) of `handler` and `size`: restored from its
/// shape's template if there is one; else booted and, with templates on, made that
/// template on the way (snapshotted, then resumed).
pub(super) async fn boot_spare(
    inner: &Inner,
    handler: &str,
    size: (u32, u64),
    network: Option<NetworkConfig>,
) -> Result<WarmVm, RuntimeError> {
    let id = new_id()?;
    let s = &inner.settings;
    let paths = PodPaths::new(&s.state_dir, &s.runtime_dir, &id);
    let config = PodConfig {
        runtime_handler: handler.to_owned(),
        ..PodConfig::default()
    };
    let shape = launch::shape(&config, size, network.is_some());
    let prepared = prepare(inner, &id, &paths, config, size, PodPhase::Warm, network).await;
    let (mut record, mut cmd) = match prepared {
        Ok(p) => p,
        Err(e) => {
            undo(inner, &paths).await;
            return Err(e);
        }
    };
    let template = if record.shared_fs {
        None
    } else {
        launch::template_of(inner, &shape)
    };
    let making = match &template {
        Some((key, None)) => inner.templates.begin(key),
        _ => None,
    };
    if making.is_some() {
        match snapshot_dir(&paths, &record) {
            Ok(dir) => cmd.snapshot_dir = Some(dir),
            Err(e) => {
                undo(inner, &paths).await;
                return Err(e);
            }
        }
    }
    let (vm, _, restored_from) =
        launch::start_or_restore(inner, &cmd, template.as_ref(), Deadline::default()).await;
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            undo(inner, &paths).await;
            return Err(e);
        }
    };
    let template_mac = restored_from.and_then(|t| t.guest_mac);
    if let (Some(mac), Some(net)) = (template_mac, record.network.as_mut()) {
        // ConfigureGuest finds the card by the MAC its guest has.
        net.guest_mac = mac;
        if let Err(e) = store::write_json(&paths.record(), &record) {
            vm.kill().await;
            undo(inner, &paths).await;
            return Err(e.into());
        }
    }
    if let (Some(making), Some(dir)) = (&making, &cmd.snapshot_dir) {
        let guest_mac = record
            .network
            .as_ref()
            .map(|n| n.guest_mac.clone())
            .filter(|m| !m.is_empty());
        if let Err(e) = make_template(inner, making, &vm, dir, &shape, guest_mac).await {
            vm.kill().await;
            undo(inner, &paths).await;
            return Err(e);
        }
    }
    Ok(WarmVm {
        id,
        handler: handler.to_owned(),
        paths,
        record,
        vm,
    })
}

/// A directory the VM's (jailed) VMM may write a snapshot into.
fn snapshot_dir(paths: &PodPaths, record: &PodRecord) -> Result<PathBuf, RuntimeError> {
    let dir = paths.dir.join("snapshot");
    store::create_private_dir(&dir)?;
    if let Some(j) = &record.jail {
        crate::sandbox::jail::give(&dir, j.uid, j.gid, 0o700)?;
    }
    Ok(dir)
}

/// Snapshots `vm` into `dir`, resumes it, and installs the snapshot as the template
/// `making` claimed. A snapshot or install that fails is logged (the template is
/// made by a later VM); a VM that cannot be resumed is an error.
async fn make_template(
    inner: &Inner,
    making: &Making<'_>,
    vm: &Vm,
    dir: &Path,
    shape: &Shape,
    guest_mac: Option<String>,
) -> Result<(), RuntimeError> {
    let snapshot = vm.snapshot(dir).await;
    vm.resume().await?;
    let made = snapshot.map_err(RuntimeError::from).and_then(|reply| {
        inner
            .templates
            .install(making, dir, shape, guest_mac, &reply)
            .map(|t| (t, reply))
    });
    match made {
        Ok((t, reply)) => tracing::info!(
            template = %t.dir.display(),
            ?shape,
            memory_mib = reply.memory_bytes >> 20,
            on_disk_mib = reply.memory_file_bytes >> 20,
            snapshot_ms = reply.took_ms,
            "template made"
        ),
        Err(e) => tracing::warn!(?shape, "making the template failed: {e}"),
    }
    Ok(())
}

/// After a pod of `shape` booted without a template although its handler has them
/// on: makes the template in the background with a VM booted for it (and then
/// removed), so that the next pod of that shape is restored.
pub(super) fn make_in_background(
    inner: &Arc<Inner>,
    handler: &str,
    size: (u32, u64),
    network: Option<NetworkConfig>,
) {
    let shape = launch::shape(
        &PodConfig {
            runtime_handler: handler.to_owned(),
            ..PodConfig::default()
        },
        size,
        network.is_some(),
    );
    // A warm pool of this shape makes it itself.
    let pooled = inner
        .warm
        .of(handler)
        .is_some_and(|p| p.target > 0 && p.size == size);
    match launch::template_of(inner, &shape) {
        Some((key, None)) if !pooled && !inner.templates.is_making(&key) => {}
        _ => return,
    }
    let (inner, handler) = (inner.clone(), handler.to_owned());
    tokio::spawn(async move {
        // As the warm pools: no boot while a pod starts, whose CPU it would take.
        while inner.warm.iter().any(|p| lock(&p.state).starting > 0) {
            tokio::time::sleep(BACKGROUND_POLL).await;
        }
        match boot_spare(&inner, &handler, size, network).await {
            Ok(w) => discard(&inner, w).await,
            Err(e) => tracing::warn!(?shape, "booting a VM to make a template failed: {e}"),
        }
    });
}

/// Kills a warm VM and removes what it made.
pub(super) async fn discard(inner: &Inner, w: WarmVm) {
    w.vm.kill().await;
    undo(inner, &w.paths).await;
}

/// Where the consoles of failed VMs are kept.
pub(super) fn failed_dir(inner: &Inner) -> PathBuf {
    inner.settings.state_dir.join("failed-vms")
}

/// Keeps the console log of a VM that failed (`<state>/failed-vms/<id>.console.log`,
/// the last `KEPT_CONSOLES` only), since its pod directory is removed with it. A VM
/// that never started wrote none.
pub(super) fn keep_console(inner: &Inner, paths: &PodPaths) {
    let dir = failed_dir(inner);
    let Some(id) = paths.dir.file_name() else {
        return;
    };
    if !paths.console().exists() {
        return;
    }
    let to = dir.join(format!("{}.console.log", id.to_string_lossy()));
    let kept =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(paths.console(), &to).map(drop));
    prune(&dir, KEPT_CONSOLES);
    match kept {
        Ok(()) => tracing::warn!(
            console = %to.display(),
            tail = %crate::sandbox::tail(&to, CONSOLE_TAIL_LINES),
            "kept the failed VM's console"
        ),
        Err(e) => tracing::warn!(
            "cannot keep the failed VM's console in {}: {e}",
            dir.display()
        ),
    }
}

/// Console lines logged with a failed VM.
const CONSOLE_TAIL_LINES: usize = 5;

/// Removes all but the `keep` newest files of `dir`.
fn prune(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep);
    for (_, f) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(f);
    }
}
