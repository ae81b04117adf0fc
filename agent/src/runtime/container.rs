//! Containers: create (image slot, guest container, log copy), start, stop, remove,
//! and tracking their exit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;
use vmlet_cri::runtime::{ContainerConfig, ContainerState, EventKind, PidNamespace};
use vmlet_proto::agent as pb;

use super::error::RuntimeError;
use super::security::{self, SecuritySettings};
use super::spec;
use super::state::{Container, Inner, Pod};
use super::util::{lock, new_id, now_ns};
use crate::images::{BlockImage, ImageConfig, ImageError, ImageLease};
use crate::logs::{self, LogSink};
use crate::sandbox::{guest, Vm};
use crate::store::{self, ContainerRecord, LogRecord, PodPhase};
use crate::volumes::{self, Planned};

/// The annotation in which the kubelet names a container's termination message path.
const TERMINATION_PATH_ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";

/// Deadline of one WaitProcess poll.
const WAIT_POLL: Duration = Duration::from_secs(60);
/// How long SIGKILL may take to end a container.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long an exit waits for the last output of the container before it is
/// recorded (see `drain_log`): the bound on how late ContainerStatus learns of an
/// exit after the guest reports it.
pub(super) const LOG_DRAIN: Duration = Duration::from_secs(1);
/// How long removal waits for the last output of the container.
const REMOVE_DRAIN: Duration = Duration::from_secs(5);

pub(super) fn running_vm(pod: &Pod) -> Result<Vm, RuntimeError> {
    match pod.vm() {
        Some(vm) if vm.running() => Ok(vm),
        _ => Err(RuntimeError::Precondition(format!(
            "pod sandbox {} is not ready: its VM is not running",
            pod.id
        ))),
    }
}

/// Picks the image slot for `image_id`: one that already holds it, else a free one
/// (never used first). Returns the serial and whether its file must be swapped in.
fn pick_slot(pod: &Pod, image_id: &str) -> Result<(String, bool), RuntimeError> {
    let mut r = lock(&pod.record);
    if let Some(s) = r
        .slots
        .iter_mut()
        .find(|s| s.image_id.as_deref() == Some(image_id))
    {
        s.users += 1;
        return Ok((s.serial.clone(), false));
    }
    let n = r.slots.len();
    let free = r
        .slots
        .iter_mut()
        .filter(|s| s.users == 0)
        .min_by_key(|s| s.image_id.is_some());
    match free {
        Some(s) => {
            s.users += 1;
            s.image_id = Some(image_id.to_owned());
            Ok((s.serial.clone(), true))
        }
        None => Err(RuntimeError::Precondition(format!(
            "all {n} image slots of pod {} hold images of running containers; \
             a pod can use at most {n} distinct images (vm.image_slots)",
            pod.id
        ))),
    }
}

/// What slot `serial` holds is unknown (a swap into it failed): it matches no image.
fn forget_slot_image(pod: &Pod, serial: &str) {
    let mut r = lock(&pod.record);
    if let Some(s) = r.slots.iter_mut().find(|s| s.serial == serial) {
        s.image_id = None;
    }
}

fn release_slot(pod: &Pod, serial: &str) {
    let mut r = lock(&pod.record);
    if let Some(s) = r.slots.iter_mut().find(|s| s.serial == serial) {
        s.users = s.users.saturating_sub(1);
    }
}

/// The guest's container spec.
fn guest_spec(
    id: &str,
    slot: &str,
    c: &ContainerConfig,
    p: &spec::Process,
    applied: &security::Applied,
    volumes: &[Planned],
) -> pb::ContainerSpec {
    let r = &c.resources;
    pb::ContainerSpec {
        container_id: id.to_owned(),
        rootfs: Some(pb::Rootfs {
            image_serial: slot.to_owned(),
            image_fstype: "erofs".into(),
            image_subdir: String::new(),
            scratch_serial: "scratch".into(),
            readonly: c.readonly_rootfs,
        }),
        process: Some(pb::Process {
            args: p.args.clone(),
            env: p.record.env.clone(),
            cwd: p.record.cwd.clone(),
            user: Some(p.user.clone()),
            terminal: c.tty,
            terminal_size: None,
            open_stdin: c.stdin,
            rlimits: Vec::new(),
            no_new_privileges: c.no_new_privs,
            capabilities: Some(applied.caps.to_guest()),
            oom_score_adj: r.oom_score_adj.clamp(-1000, 1000) as i32,
            seccomp_filter: applied.seccomp_filter.clone(),
        }),
        mounts: volumes.iter().map(Planned::guest_mount).collect(),
        resources: Some(spec::guest_resources(r)),
        share_pod_pid_namespace: c.security.pid_namespace == PidNamespace::Pod,
        target_pid_namespace: match &c.security.pid_namespace {
            PidNamespace::Target(t) => t.clone(),
            _ => String::new(),
        },
        privileged: c.security.privileged,
        masked_paths: applied.masked_paths.clone(),
        readonly_paths: applied.readonly_paths.clone(),
        uid_mappings: applied
            .userns
            .iter()
            .flat_map(|u| u.uids.iter().map(guest_id_mapping))
            .collect(),
        gid_mappings: applied
            .userns
            .iter()
            .flat_map(|u| u.gids.iter().map(guest_id_mapping))
            .collect(),
    }
}

fn guest_id_mapping(m: &vmlet_cri::runtime::IdMap) -> pb::IdMapping {
    pb::IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    }
}

/// The key a container's name is reserved under in its pod: (pod, name, attempt).
type NameKey = (String, String, u32);

/// What one CreateContainer has done so far, undone when it fails: the container's
/// name reserved, an image slot taken (its content unknown if the swap failed), the
/// container's records written and the pod record saved with the slot in use, the
/// container created in the guest. [`Creation::commit`] keeps it all; an error path
/// calls [`Creation::undo`], which removes the guest's container (a guest call, so
/// awaited there) and drops the guard, whose `Drop` undoes the rest in reverse order.
/// A creation dropped midway (its call cancelled) is undone by the same `Drop`, the
/// guest's container then by a task.
struct Creation<'a> {
    inner: &'a Inner,
    pod: &'a Arc<Pod>,
    id: String,
    name: Option<NameKey>,
    slot: Option<String>,
    /// The swap into `slot` failed: what the guest sees there is unknown.
    slot_unknown: bool,
    /// Image slots taken for image volumes.
    volume_slots: Vec<String>,
    /// The container and log-position records may exist on disk.
    records: bool,
    /// The pod record on disk counts this container as a user of `slot`.
    pod_saved: bool,
    /// The container uses pod volumes; those named were made for it.
    volumes: Option<(Vm, Vec<String>)>,
    guest: Option<Vm>,
}

impl<'a> Creation<'a> {
    /// Reserves the container's name in its pod (refused if another container has it).
    fn reserve(
        inner: &'a Inner,
        pod: &'a Arc<Pod>,
        id: String,
        config: &ContainerConfig,
    ) -> Result<Self, RuntimeError> {
        let key = (pod.id.clone(), config.name.clone(), config.attempt);
        let mut t = lock(&inner.tables);
        if let Some(other) = t.container_names.get(&key) {
            return Err(RuntimeError::AlreadyExists(format!(
                "container name {:?} (attempt {}) is reserved for {other} in pod {}",
                config.name, config.attempt, pod.id
            )));
        }
        t.container_names.insert(key.clone(), id.clone());
        Ok(Creation {
            inner,
            pod,
            id,
            name: Some(key),
            slot: None,
            slot_unknown: false,
            volume_slots: Vec::new(),
            records: false,
            pod_saved: false,
            volumes: None,
            guest: None,
        })
    }

    /// Makes the pod volumes the container mounts (sharing those that exist).
    async fn attach_volumes(&mut self, vm: &Vm, planned: &[Planned]) -> Result<(), RuntimeError> {
        let made = self
            .pod
            .volumes
            .attach(
                vm,
                &self.pod.id,
                &self.id,
                planned,
                ("scratch", self.inner.settings.volumes),
            )
            .await?;
        self.volumes = Some((vm.clone(), made));
        Ok(())
    }

    /// Puts `image` in an image slot of the pod: one that holds it already, else a
    /// free one into which its file is swapped. Returns the slot's serial.
    async fn attach_image(&mut self, vm: &Vm, image: &BlockImage) -> Result<String, RuntimeError> {
        let (slot, swap) = pick_slot(self.pod, image.id.as_str())?;
        self.slot = Some(slot.clone());
        if swap {
            if let Err(e) = vm.swap_drive(&slot, &image.path).await {
                // Its content is unknown now: it must not be matched to any image.
                self.slot_unknown = true;
                return Err(e.into());
            }
        }
        Ok(slot)
    }

    /// Puts an image volume's image in a slot (as [`Self::attach_image`]).
    async fn attach_volume_image(
        &mut self,
        vm: &Vm,
        image: &BlockImage,
    ) -> Result<String, RuntimeError> {
        let (slot, swap) = pick_slot(self.pod, image.id.as_str())?;
        self.volume_slots.push(slot.clone());
        if swap {
            if let Err(e) = vm.swap_drive(&slot, &image.path).await {
                forget_slot_image(self.pod, &slot);
                return Err(e.into());
            }
        }
        Ok(slot)
    }

    /// Writes the log position, the container record, and the pod record (its slots).
    fn write_records(&mut self, record: &ContainerRecord) -> Result<(), RuntimeError> {
        let paths = &self.pod.paths;
        self.records = true;
        store::write_json(&paths.log(&self.id), &LogRecord::default())?;
        store::write_json(&paths.container(&self.id), record)?;
        let pod_record = lock(&self.pod.record).clone();
        store::write_json(&paths.record(), &pod_record)?;
        self.pod_saved = true;
        Ok(())
    }

    /// Creates the container in the guest.
    async fn create_in_guest(
        &mut self,
        vm: &Vm,
        spec: pb::ContainerSpec,
    ) -> Result<Option<pb::User>, RuntimeError> {
        let resp = vm
            .client
            .clone()
            .create_container(guest::req(
                pb::CreateContainerRequest { spec: Some(spec) },
                guest::CALL,
            ))
            .await
            .map_err(RuntimeError::guest("CreateContainer"))?;
        self.guest = Some(vm.clone());
        Ok(resp.into_inner().user)
    }

    /// Keeps everything: the container exists.
    fn commit(mut self) {
        self.name = None;
        self.slot = None;
        self.volume_slots.clear();
        self.records = false;
        self.pod_saved = false;
        self.volumes = None;
        self.guest = None;
    }

    /// Undoes everything done so far.
    async fn undo(mut self) {
        if let Some(vm) = self.guest.take() {
            remove_in_guest(&vm, &self.id).await;
        }
        if let Some((vm, made)) = self.volumes.take() {
            self.pod.volumes.undo(&vm, &self.id, &made).await;
        }
    }
}

impl Drop for Creation<'_> {
    fn drop(&mut self) {
        if let Some(vm) = self.guest.take() {
            // Dropped midway: the guest call cannot be awaited here.
            let id = self.id.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { remove_in_guest(&vm, &id).await });
            }
        }
        if let Some((vm, made)) = self.volumes.take() {
            let (volumes, id) = (self.pod.volumes.clone(), self.id.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { volumes.undo(&vm, &id, &made).await });
            }
        }
        if let Some(slot) = self.slot.take() {
            if self.slot_unknown {
                forget_slot_image(self.pod, &slot);
            }
            release_slot(self.pod, &slot);
        }
        for slot in self.volume_slots.drain(..) {
            release_slot(self.pod, &slot);
        }
        if self.records {
            let _ = std::fs::remove_file(self.pod.paths.container(&self.id));
            let _ = std::fs::remove_file(self.pod.paths.log(&self.id));
        }
        if self.pod_saved {
            if let Err(e) = self.pod.save() {
                tracing::warn!(pod = %self.pod.id, "undoing a container's creation: {e}");
            }
        }
        if let Some(key) = self.name.take() {
            lock(&self.inner.tables).container_names.remove(&key);
        }
    }
}

/// Asks the guest to remove a container, whatever its state.
async fn guest_remove(vm: &Vm, id: &str) -> Result<(), tonic::Status> {
    vm.client
        .clone()
        .remove_container(guest::req(
            pb::RemoveContainerRequest {
                container_id: id.to_owned(),
                force: true,
            },
            guest::CALL,
        ))
        .await
        .map(drop)
}

/// Removes a container from the guest, whatever its state; a failure is logged.
pub(super) async fn remove_in_guest(vm: &Vm, id: &str) {
    if let Err(s) = guest_remove(vm, id).await {
        tracing::warn!(container = %id, "removing the container from the guest: {s}");
    }
}

/// The pod's VM, if the pod takes new containers (ready, its VM running).
fn ready_vm(pod: &Pod) -> Result<Vm, RuntimeError> {
    if lock(&pod.record).phase != PodPhase::Ready {
        return Err(RuntimeError::Precondition(format!(
            "pod sandbox {} is not ready (stopped or its VM exited): it takes no new containers",
            pod.id
        )));
    }
    running_vm(pod)
}

/// The image a request names, and a lease that keeps it while the container exists.
fn lease_image(inner: &Inner, name: &str) -> Result<(BlockImage, ImageLease), RuntimeError> {
    let failed = |source| RuntimeError::Image {
        image: name.to_owned(),
        source: Box::new(source),
    };
    let image = inner
        .images
        .block_image(name)
        .map_err(|source| match source {
            ImageError::NotFound(_) => RuntimeError::NotFound(format!(
                "image {name:?} is not present on this node: pull it first"
            )),
            source => failed(source),
        })?;
    let lease = inner.images.lease(image.id.as_str()).map_err(failed)?;
    Ok((image, lease))
}

/// The container's process (the request merged with the image config) and the full
/// path of its log file ("" for none).
fn plan(
    pod: &Pod,
    config: &ContainerConfig,
    image: &ImageConfig,
    settings: &SecuritySettings,
) -> Result<(spec::Process, security::Applied, String), RuntimeError> {
    let (hostname, log_dir) = {
        let r = lock(&pod.record);
        let h = if r.config.hostname.is_empty() {
            r.config.metadata.name.clone()
        } else {
            r.config.hostname.clone()
        };
        (h, r.config.log_directory.clone())
    };
    let mut process = spec::merge(config, image, &hostname)?;
    let applied = {
        let r = lock(&pod.record);
        security::apply(config, &r.config, settings)?
    };
    process.record.capabilities = Some(applied.caps.clone());
    process.record.seccomp_filter = applied.seccomp_filter.clone();
    process.record.no_new_privs = config.no_new_privs;
    let log_path = if log_dir.is_empty() || config.log_path.is_empty() {
        String::new()
    } else {
        Path::new(&log_dir)
            .join(&config.log_path)
            .display()
            .to_string()
    };
    Ok((process, applied, log_path))
}

/// The record of a container just created.
fn new_record(
    id: &str,
    pod_id: &str,
    config: &ContainerConfig,
    image_id: &str,
    slot: &str,
    process: &spec::Process,
    log_path: &str,
) -> ContainerRecord {
    ContainerRecord {
        id: id.to_owned(),
        pod_id: pod_id.to_owned(),
        config: config.clone(),
        image_id: image_id.to_owned(),
        slot: slot.to_owned(),
        process: process.record.clone(),
        state: ContainerState::Created,
        created_at_ns: now_ns(),
        started_at_ns: 0,
        finished_at_ns: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        log_path: log_path.to_owned(),
        guest_finished_at_ns: 0,
        exit_seen_at_ns: 0,
        volumes: Vec::new(),
    }
}

/// Creates a container in a ready pod.
pub async fn create(
    inner: &Arc<Inner>,
    pod_id: &str,
    config: ContainerConfig,
) -> Result<String, RuntimeError> {
    let pod = inner.pod(pod_id)?;
    let _op = pod.op.lock().await;
    let vm = ready_vm(&pod)?;
    let id = new_id()?;
    let mut creation = Creation::reserve(inner, &pod, id.clone(), &config)?;
    match create_reserved(&mut creation, &vm, config).await {
        Ok(c) => {
            creation.commit();
            lock(&inner.tables).containers.insert(id.clone(), c);
            inner.emit(&id, pod_id, EventKind::Created);
            Ok(id)
        }
        Err(e) => {
            creation.undo().await;
            Err(e)
        }
    }
}

/// The steps of CreateContainer once its name is reserved: image, slot, records,
/// guest container, log file. What they do, `creation` undoes on failure.
async fn create_reserved(
    creation: &mut Creation<'_>,
    vm: &Vm,
    mut config: ContainerConfig,
) -> Result<Arc<Container>, RuntimeError> {
    let pod = creation.pod;
    let id = creation.id.clone();
    if let PidNamespace::Target(t) = &config.security.pid_namespace {
        let target = creation.inner.container(t)?;
        if target.pod.id != pod.id {
            return Err(RuntimeError::Invalid(format!(
                "namespace_options.target_id {t}: not a container of pod {}",
                pod.id
            )));
        }
        config.security.pid_namespace = PidNamespace::Target(target.id.clone());
    }
    let (image, lease) = lease_image(creation.inner, &config.image)?;
    let (process, applied, log_path) = plan(
        pod,
        &config,
        &image.config,
        &creation.inner.settings.security,
    )?;
    let termination = config
        .annotations
        .get(TERMINATION_PATH_ANNOTATION)
        .map_or("", String::as_str);
    let facts = volumes::PodFacts {
        termination_path: termination,
        shared_fs: pod.volumes.share().is_some(),
    };
    let mut planned = volumes::plan_all(&config.mounts, facts, &creation.inner.settings.volumes)?;
    let mut leases = vec![lease];
    let mut volume_images = Vec::new();
    for p in planned
        .iter_mut()
        .filter(|p| p.class == volumes::Class::Image)
    {
        let (img, lease) = lease_image(creation.inner, &p.image)?;
        p.volume = volumes::plan::image_volume_name(img.id.as_str());
        leases.push(lease);
        volume_images.push(img);
    }
    let slot = creation.attach_image(vm, &image).await?;
    let image_volumes = planned
        .iter_mut()
        .filter(|p| p.class == volumes::Class::Image);
    for (p, img) in image_volumes.zip(&volume_images) {
        p.image_slot = Some(creation.attach_volume_image(vm, img).await?);
    }
    creation.attach_volumes(vm, &planned).await?;
    let mut record = new_record(
        &id,
        &pod.id,
        &config,
        image.id.as_str(),
        &slot,
        &process,
        &log_path,
    );
    record.volumes = planned;
    creation.write_records(&record)?;
    let got = creation
        .create_in_guest(
            vm,
            guest_spec(&id, &slot, &config, &process, &applied, &record.volumes),
        )
        .await?;
    if let Some(u) = got {
        // What the guest resolved from names and the image's group file.
        record.process.uid = u.uid;
        record.process.gid = u.gid;
        record.process.additional_gids = u.additional_gids;
        store::write_json(&pod.paths.container(&id), &record)?;
    }
    let sink = LogSink::open((!log_path.is_empty()).then(|| PathBuf::from(&log_path)), 0)?;
    let c = Arc::new(Container {
        id: id.clone(),
        pod: pod.clone(),
        record: Mutex::new(record),
        _leases: leases,
        log_health: sink.health(),
        sink: Arc::new(tokio::sync::Mutex::new(sink)),
        log_task: Mutex::new(None),
        exit_task: Mutex::new(None),
        log_done: tokio::sync::watch::Sender::new(false),
        output: logs::output_tap(),
    });
    start_log_copy(&c, vm, LogRecord::default());
    tracing::info!(container = %id, pod = %pod.id, slot = %slot, "container created");
    Ok(c)
}

/// Starts copying a container's output to its log from `rec` on.
pub(super) fn start_log_copy(c: &Arc<Container>, vm: &Vm, rec: LogRecord) {
    let tty = lock(&c.record).config.tty;
    let copy = logs::copy(
        vm.client.clone(),
        c.id.clone(),
        tty,
        c.sink.clone(),
        c.output.clone(),
        c.pod.paths.log(&c.id),
        rec,
    );
    let id = c.id.clone();
    let done = c.log_done.clone();
    done.send_replace(false);
    // One task, so that aborting it stops the copy itself.
    let handle = tokio::spawn(async move {
        match copy.await {
            Ok(()) => tracing::debug!(container = %id, "log copy done"),
            Err(e) => tracing::error!(container = %id, "log copy failed: {e}"),
        }
        done.send_replace(true);
    });
    *lock(&c.log_task) = Some(handle);
}

/// How a container ended, from whichever path learnt of it.
#[derive(Debug, Clone)]
pub(super) struct Exit {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// When the guest says the process ended (its own clock; 0: unknown).
    pub guest_finished_at_ns: i64,
}

impl Exit {
    /// An exit status the guest reported.
    pub fn from_guest(s: &pb::ProcessStatus) -> Self {
        Exit {
            // A program that never ran has no exit code of its own; containerd
            // reports 128 for it.
            exit_code: if s.reason == "StartError" && s.exit_code == 0 {
                128
            } else {
                s.exit_code
            },
            reason: s.reason.clone(),
            message: s.message.clone(),
            guest_finished_at_ns: s.finished_at_ns,
        }
    }

    /// An exit vmletd concludes without the guest (its VM is gone): code 255.
    pub fn lost(reason: &str, message: &str) -> Self {
        Exit {
            exit_code: 255,
            reason: reason.to_owned(),
            message: message.to_owned(),
            guest_finished_at_ns: 0,
        }
    }
}

/// Records a container's exit: the one step every path that learns of an exit takes
/// (the guest's wait, StopContainer, a start that failed, a VM that died, recovery
/// after a restart), so that ContainerStatus, the record on disk and the one
/// `Stopped` event agree. Returns whether the state changed (a second report of the
/// same exit changes nothing and sends no event).
pub(super) fn record_exit(inner: &Inner, c: &Container, exit: Exit) -> bool {
    let changed = {
        let mut r = lock(&c.record);
        if !matches!(
            r.state,
            ContainerState::Created | ContainerState::Running | ContainerState::Unknown
        ) {
            false
        } else {
            r.state = ContainerState::Exited;
            r.exit_code = exit.exit_code;
            r.reason = exit.reason.clone();
            r.message = exit.message.clone();
            r.guest_finished_at_ns = exit.guest_finished_at_ns;
            // Host time, as for created and started: the guest's clock is its own.
            let now = now_ns();
            // When vmletd learnt of the exit: the guest's wait notes it before its
            // log drain; every other path learns of it now.
            if r.exit_seen_at_ns == 0 {
                r.exit_seen_at_ns = now;
            }
            r.finished_at_ns = now.max(r.started_at_ns).max(r.exit_seen_at_ns);
            true
        }
    };
    if changed {
        if let Err(e) = c.save() {
            tracing::error!(container = %c.id, "{e}");
        }
        tracing::info!(container = %c.id, exit_code = exit.exit_code, reason = %exit.reason, "container exited");
        inner.emit(&c.id, &c.pod.id, EventKind::Stopped);
    }
    changed
}

/// Records a guest exit status; returns whether the state changed.
pub(super) fn apply_exit(inner: &Inner, c: &Container, s: &pb::ProcessStatus) -> bool {
    record_exit(inner, c, Exit::from_guest(s))
}

async fn wait_once(
    vm: &Vm,
    id: &str,
    timeout: Duration,
) -> Result<pb::ProcessStatus, tonic::Status> {
    vm.client
        .clone()
        .wait_process(guest::req(
            pb::WaitProcessRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            },
            timeout,
        ))
        .await
        .map(|r| r.into_inner().status.unwrap_or_default())
}

/// Waits, at most `LOG_DRAIN`, until the container's log copy has written everything
/// its process wrote, as containerd drains a container's IO before it reports the
/// exit: whoever sees the container exited then finds its whole output in the log.
/// The bound is strict, so a slow or stuck copy (a child that kept the stream open)
/// never holds an exit back for longer; the copy then goes on and verbose
/// ContainerStatus says `logComplete: false` until it ends.
async fn drain_log(c: &Container) {
    let mut done = c.log_done.subscribe();
    if tokio::time::timeout(LOG_DRAIN, done.wait_for(|d| *d))
        .await
        .is_err()
    {
        tracing::debug!(container = %c.id, "output still open {LOG_DRAIN:?} after the exit");
    }
}

/// Copies the container's termination log back to the host, before its exit is
/// recorded: the kubelet reads it from there once it sees the exit.
async fn copy_back(c: &Container, vm: &Vm) {
    let planned = lock(&c.record).volumes.clone();
    c.pod.volumes.copy_back(vm, &planned).await;
}

/// Follows a running container until it exits.
pub(super) fn watch_exit(inner: Arc<Inner>, c: Arc<Container>, vm: Vm) {
    let c2 = c.clone();
    let handle = tokio::spawn(async move {
        loop {
            match wait_once(&vm, &c.id, WAIT_POLL).await {
                Ok(s) if s.state == pb::ProcessState::Exited as i32 => {
                    lock(&c.record).exit_seen_at_ns = now_ns();
                    tokio::join!(drain_log(&c), copy_back(&c, &vm));
                    apply_exit(&inner, &c, &s);
                    return;
                }
                Ok(_) => {}
                Err(s) if guest::deadline_passed(&s) => {}
                Err(s) if s.code() == Code::NotFound => return,
                Err(s) => {
                    if !vm.running() {
                        return;
                    }
                    tracing::debug!(container = %c.id, "waiting for exit: {s}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    *lock(&c2.exit_task) = Some(handle);
}

/// Starts a created container.
pub async fn start(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let c = inner.container(id)?;
    let pod = c.pod.clone();
    let _op = pod.op.lock().await;
    let state = lock(&c.record).state;
    if state != ContainerState::Created {
        return Err(RuntimeError::Precondition(format!(
            "container {id} is {state:?}, not Created: only a created container can be started"
        )));
    }
    let vm = running_vm(&c.pod)?;
    let started = vm
        .client
        .clone()
        .start_container(guest::req(
            pb::StartContainerRequest {
                container_id: id.to_owned(),
            },
            guest::CALL,
        ))
        .await;
    if let Err(status) = started {
        // A program that cannot run leaves the container exited with StartError.
        if let Ok(s) = wait_once(&vm, id, Duration::from_secs(5)).await {
            if s.state == pb::ProcessState::Exited as i32 {
                apply_exit(inner, &c, &s);
            }
        }
        return Err(RuntimeError::guest("StartContainer")(status));
    }
    {
        let mut r = lock(&c.record);
        r.state = ContainerState::Running;
        r.started_at_ns = now_ns();
    }
    c.save()?;
    inner.emit(id, &c.pod.id, EventKind::Started);
    watch_exit(inner.clone(), c, vm);
    Ok(())
}

async fn signal(vm: &Vm, id: &str, signal: u32) -> Result<(), tonic::Status> {
    vm.client
        .clone()
        .signal_process(guest::req(
            pb::SignalProcessRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal,
            },
            guest::CALL,
        ))
        .await
        .map(drop)
}

/// The VM and stop signal of a container that runs, if it does.
fn running_target(c: &Container) -> Option<(Vm, u32)> {
    let (state, stop_signal) = {
        let r = lock(&c.record);
        (r.state, r.process.stop_signal)
    };
    if state != ContainerState::Running {
        return None;
    }
    running_vm(&c.pod).ok().map(|vm| (vm, stop_signal))
}

/// Sends `sig`; a process that has exited already is fine (the wait returns at once).
async fn send(vm: &Vm, id: &str, sig: u32) -> Result<(), RuntimeError> {
    match signal(vm, id, sig).await {
        Ok(()) => Ok(()),
        Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
        Err(s) => Err(RuntimeError::guest("SignalProcess")(s)),
    }
}

/// Waits up to `timeout` for the container to exit and records the exit; returns
/// whether it has (a container the guest no longer knows has too).
async fn wait_exit(
    inner: &Arc<Inner>,
    c: &Arc<Container>,
    vm: &Vm,
    timeout: Duration,
) -> Result<bool, RuntimeError> {
    match wait_once(vm, &c.id, timeout).await {
        Ok(s) if s.state == pb::ProcessState::Exited as i32 => {
            copy_back(c, vm).await;
            apply_exit(inner, c, &s);
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(s) if guest::deadline_passed(&s) => Ok(false),
        Err(s) if s.code() == Code::NotFound => Ok(true),
        Err(s) => Err(RuntimeError::guest("WaitProcess")(s)),
    }
}

/// SIGKILL, and the exit it brings.
async fn kill(inner: &Arc<Inner>, c: &Arc<Container>, vm: &Vm) -> Result<(), RuntimeError> {
    send(vm, &c.id, libc::SIGKILL as u32).await?;
    if wait_exit(inner, c, vm, KILL_WAIT).await? {
        return Ok(());
    }
    Err(RuntimeError::Timeout(format!(
        "container {} did not exit after SIGKILL",
        c.id
    )))
}

/// Stops a running container: its stop signal, then SIGKILL after `timeout`. A
/// container that is not running is left as it is. The caller holds the pod's
/// operation lock.
pub async fn stop(
    inner: &Arc<Inner>,
    c: &Arc<Container>,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let Some((vm, stop_signal)) = running_target(c) else {
        return Ok(());
    };
    if !timeout.is_zero() {
        send(&vm, &c.id, stop_signal).await?;
        if wait_exit(inner, c, &vm, timeout).await? {
            return Ok(());
        }
        tracing::info!(container = %c.id, "still running {timeout:?} after signal {stop_signal}: SIGKILL");
    }
    kill(inner, c, &vm).await
}

/// StopContainer: [`stop`], holding the pod's operation lock whenever it reads the
/// container's state or signals it, so that a concurrent StartContainer (or
/// RemoveContainer) comes wholly before or after each step. The grace period is waited
/// out without it: the pod's other containers are not held up for that long.
pub async fn stop_container(
    inner: &Arc<Inner>,
    c: &Arc<Container>,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    if !timeout.is_zero() {
        let signalled = {
            let _op = c.pod.op.lock().await;
            match running_target(c) {
                None => return Ok(()),
                Some((vm, stop_signal)) => {
                    send(&vm, &c.id, stop_signal).await?;
                    vm
                }
            }
        };
        if wait_exit(inner, c, &signalled, timeout).await? {
            return Ok(());
        }
        tracing::info!(container = %c.id, "still running {timeout:?} after its stop signal: SIGKILL");
    }
    let _op = c.pod.op.lock().await;
    stop(inner, c, Duration::ZERO).await
}

/// Removes a container, killing it first if it runs. Its log file stays (kubelet owns
/// it).
pub async fn remove(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let c = inner.container(id)?;
    let pod = c.pod.clone();
    let _op = pod.op.lock().await;
    if lock(&c.record).state == ContainerState::Running {
        stop(inner, &c, Duration::ZERO).await?;
    }
    if let Some(vm) = pod.vm().filter(|vm| vm.running()) {
        // Let the copier take the last output before the guest forgets the container.
        let task = lock(&c.log_task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(REMOVE_DRAIN, &mut task).await.is_err() {
                task.abort();
            }
        }
        match guest_remove(&vm, id).await {
            Ok(()) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(RuntimeError::guest("RemoveContainer")(s)),
        }
    }
    c.abort_tasks();
    pod.volumes
        .release(pod.vm().filter(|vm| vm.running()).as_ref(), id)
        .await;
    let (slot, name, attempt, volume_slots) = {
        let r = lock(&c.record);
        let volume_slots: Vec<String> = r
            .volumes
            .iter()
            .filter_map(|p| p.image_slot.clone())
            .collect();
        (
            r.slot.clone(),
            r.config.name.clone(),
            r.config.attempt,
            volume_slots,
        )
    };
    release_slot(&pod, &slot);
    for s in &volume_slots {
        release_slot(&pod, s);
    }
    pod.save()?;
    for p in [pod.paths.container(id), pod.paths.log(id)] {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", p.display());
            }
        }
    }
    {
        let mut t = lock(&inner.tables);
        t.containers.remove(id);
        t.container_names.remove(&(pod.id.clone(), name, attempt));
    }
    inner.emit(id, &pod.id, EventKind::Deleted);
    tracing::info!(container = %id, "container removed");
    Ok(())
}
