//! A pod's guest volumes: made when a container first needs them, kept in sync with
//! the host while the pod runs, termination logs copied back, removed when no
//! container uses them (emptyDirs only with the pod, as the kubelet keeps them).
//!
//! One task per pod watches the host side of every copied volume with inotify (the
//! volume's directory, or its file), and also looks every [`RESCAN`] in case a
//! change came where no watch sees it (deep in a directory, or before a watch was
//! set). Either way it compares each volume's [`tree::fingerprint`] with the last
//! copy's and copies again what changed.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use vmlet_cri::runtime::UserNamespaceConfig;
use vmlet_proto::agent as pb;

use super::plan::{Class, Planned, VolumeSettings, MAX_COPY_ENTRIES, TERMINATION_LOG_MAX};
use super::share::{self, Share, ShareError};
use super::tree;
use crate::sandbox::{guest, Vm};

/// How often every copied volume is compared with its host tree, watched or not.
pub const RESCAN: Duration = Duration::from_secs(10);
/// How long a burst of host changes may last before the copy is made.
const SETTLE: Duration = Duration::from_millis(50);

/// A volume operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The host side could not be read.
    #[error("mount of {host:?} at {container:?}: {source}")]
    Host {
        /// Host path.
        host: String,
        /// Container path.
        container: String,
        /// Why.
        source: tree::TreeError,
    },
    /// The host side of a shared volume could not be made.
    #[error("mount of {host:?} at {container:?}: {source}")]
    Share {
        /// Host path.
        host: String,
        /// Container path.
        container: String,
        /// Why.
        source: ShareError,
    },
    /// The guest refused or failed.
    #[error("guest {call} for the mount at {container:?}: {status}")]
    Guest {
        /// The guest call.
        call: &'static str,
        /// Container path.
        container: String,
        /// What the guest said.
        status: tonic::Status,
    },
}

impl VolumeError {
    /// The gRPC code a CRI caller should see.
    pub fn code(&self) -> tonic::Code {
        match self {
            VolumeError::Host {
                source: tree::TreeError::TooBig(_) | tree::TreeError::Special { .. },
                ..
            } => tonic::Code::InvalidArgument,
            VolumeError::Host { .. } | VolumeError::Share { .. } => tonic::Code::Internal,
            VolumeError::Guest { status, .. } => match status.code() {
                tonic::Code::InvalidArgument => tonic::Code::InvalidArgument,
                _ => tonic::Code::Internal,
            },
        }
    }
}

struct Volume {
    host: PathBuf,
    class: Class,
    /// The host tree's fingerprint when last copied (None: copy at the next look).
    copied: Option<u64>,
    /// Containers that mount it.
    users: BTreeSet<String>,
}

impl Volume {
    /// Whether the sync task copies the host tree in when it changes: copied
    /// volumes only. A termination log is copied in once, when its container is
    /// made, and from then on holds what the container writes: copying the host's
    /// file in again (as after a daemon restart, when nothing is known to have been
    /// copied) would wipe the container's message before it is copied back.
    fn kept_in_sync(&self) -> bool {
        self.class == Class::Copied
    }
}

#[derive(Default)]
struct State {
    volumes: HashMap<String, Volume>,
    watcher: Option<JoinHandle<()>>,
}

/// A pod's guest volumes.
#[derive(Default)]
pub struct PodVolumes {
    state: Mutex<State>,
    /// The pod's shared file system on the host, if it has one.
    share: Mutex<Option<Share>>,
    /// Wakes the watcher when the set of volumes changed.
    changed: Arc<Notify>,
    settings: Mutex<VolumeSettings>,
    /// The pod's user namespace, if it has one.
    userns: Option<UserNamespaceConfig>,
}

impl PodVolumes {
    /// The volumes of a pod with user namespace `userns` (`None`: the guest's own).
    pub fn new(userns: Option<UserNamespaceConfig>) -> PodVolumes {
        PodVolumes {
            userns,
            ..Default::default()
        }
    }

    /// A copied tree's owners as the pod's user namespace maps them outside, so
    /// that inside they are the host's owners (root's files root's, a group's files
    /// that group's): tmpfs, where the copies live, cannot be idmapped in the guest.
    /// Ids the mappings leave out stay as they are.
    fn outside(&self, mut entries: Vec<pb::VolumeEntry>) -> Vec<pb::VolumeEntry> {
        let Some(ns) = &self.userns else {
            return entries;
        };
        for e in &mut entries {
            e.uid = ns.host_uid(e.uid).unwrap_or(e.uid);
            e.gid = ns.host_gid(e.gid).unwrap_or(e.gid);
        }
        entries
    }

    /// Gives the pod its shared file system.
    pub fn set_share(&self, share: Share) {
        *self.share.lock().unwrap_or_else(PoisonError::into_inner) = Some(share);
    }

    /// The pod's shared file system, if it has one.
    pub fn share(&self) -> Option<Share> {
        self.share
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn max_copy_bytes(&self) -> u64 {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max_copy_bytes
    }

    /// Takes `settings`, and starts keeping the volumes in sync on `vm` unless that
    /// runs already.
    fn start(self: &Arc<Self>, vm: &Vm, pod: &str, settings: VolumeSettings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
        let running = self
            .lock()
            .watcher
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        if !running {
            self.watch(vm.clone(), pod);
        }
    }

    /// Makes the guest volumes `planned` needs for `container` (those already there
    /// are shared). Returns the names of the volumes it made, for [`Self::undo`].
    pub async fn attach(
        self: &Arc<Self>,
        vm: &Vm,
        pod: &str,
        container: &str,
        planned: &[Planned],
        (scratch_serial, settings): (&str, VolumeSettings),
    ) -> Result<Vec<String>, VolumeError> {
        if planned.is_empty() {
            return Ok(Vec::new());
        }
        self.start(vm, pod, settings);
        let mut made = Vec::new();
        for p in planned {
            let exists = {
                let mut s = self.lock();
                match s.volumes.get_mut(&p.volume) {
                    Some(v) => {
                        v.users.insert(container.to_owned());
                        true
                    }
                    None => false,
                }
            };
            if exists {
                continue;
            }
            if let Err(e) = self.make(vm, container, p, scratch_serial).await {
                self.undo(vm, container, &made).await;
                return Err(e);
            }
            made.push(p.volume.clone());
        }
        if !made.is_empty() {
            self.changed.notify_one();
        }
        Ok(made)
    }

    async fn make(
        &self,
        vm: &Vm,
        container: &str,
        p: &Planned,
        scratch: &str,
    ) -> Result<(), VolumeError> {
        let host = PathBuf::from(&p.host_path);
        let mut copied = None;
        match p.class {
            Class::Copied | Class::TerminationLog => {
                let before = tree::fingerprint(&host, MAX_COPY_ENTRIES).ok();
                let entries = self.outside(read_host(p, self.max_copy_bytes())?);
                sync_guest(vm, &p.volume, entries)
                    .await
                    .map_err(guest_err("SyncVolume", p))?;
                copied = before;
            }
            Class::ScratchDir | Class::MemoryDir(_) | Class::Shared | Class::Image => {
                use pb::prepare_volume_request::Medium;
                let (medium, size) = match p.class {
                    Class::MemoryDir(size) => (Medium::Memory, size),
                    Class::Shared => (Medium::Shared, 0),
                    Class::Image => (Medium::Image, 0),
                    _ => (Medium::Disk, 0),
                };
                let mut req = pb::PrepareVolumeRequest {
                    name: p.volume.clone(),
                    scratch_serial: scratch.to_owned(),
                    size_limit_bytes: size,
                    fs_tag: share::FS_TAG.to_owned(),
                    image_serial: p.image_slot.clone().unwrap_or_default(),
                    medium: 0,
                };
                let share = if p.class == Class::Shared {
                    let share = self.share().ok_or_else(|| VolumeError::Share {
                        host: p.host_path.clone(),
                        container: p.container_path.clone(),
                        source: ShareError::Daemon("the pod has no shared file system".into()),
                    })?;
                    share
                        .bind(&p.volume, &host)
                        .map_err(|source| VolumeError::Share {
                            host: p.host_path.clone(),
                            container: p.container_path.clone(),
                            source,
                        })?;
                    Some(share)
                } else {
                    None
                };
                req.set_medium(medium);
                let prepared = vm
                    .client
                    .clone()
                    .prepare_volume(guest::req(req, guest::CALL))
                    .await
                    .map_err(guest_err("PrepareVolume", p));
                if let Err(e) = prepared {
                    if let Some(share) = share {
                        remove_guest(vm, &p.volume).await;
                        share.unbind(&p.volume);
                    }
                    return Err(e);
                }
            }
        }
        let mut s = self.lock();
        let v = s.volumes.entry(p.volume.clone()).or_insert(Volume {
            host,
            class: p.class,
            copied,
            users: BTreeSet::new(),
        });
        v.users.insert(container.to_owned());
        Ok(())
    }

    /// Takes back a failed creation: `container` no longer uses the volumes, and
    /// those in `made` are removed from the guest.
    pub async fn undo(&self, vm: &Vm, container: &str, made: &[String]) {
        self.forget_user(container);
        for name in made {
            let gone = self.lock().volumes.remove(name);
            remove_guest(vm, name).await;
            self.unbind(gone.as_ref(), name);
        }
    }

    /// Unbinds a shared volume's host side (after the guest let go of it).
    fn unbind(&self, v: Option<&Volume>, name: &str) {
        if v.is_some_and(|v| v.class == Class::Shared) {
            if let Some(share) = self.share() {
                share.unbind(name);
            }
        }
    }

    fn forget_user(&self, container: &str) {
        for v in self.lock().volumes.values_mut() {
            v.users.remove(container);
        }
    }

    /// Records that `container` uses `planned` (found after a restart); a copied
    /// volume is copied again at the next look, so what changed meanwhile arrives.
    pub fn adopt(
        self: &Arc<Self>,
        vm: &Vm,
        pod: &str,
        container: &str,
        planned: &[Planned],
        settings: VolumeSettings,
    ) {
        if planned.is_empty() {
            return;
        }
        self.start(vm, pod, settings);
        let mut s = self.lock();
        for p in planned {
            s.volumes
                .entry(p.volume.clone())
                .or_insert_with(|| Volume {
                    host: PathBuf::from(&p.host_path),
                    class: p.class,
                    copied: None,
                    users: BTreeSet::new(),
                })
                .users
                .insert(container.to_owned());
        }
        drop(s);
        self.changed.notify_one();
    }

    /// `container` is gone: its volumes that no other container uses are removed
    /// from the guest, except emptyDirs, which live as long as the pod.
    pub async fn release(&self, vm: Option<&Vm>, container: &str) {
        let gone: Vec<(String, Volume)> = {
            let mut s = self.lock();
            let names: Vec<String> = s
                .volumes
                .iter_mut()
                .filter_map(|(name, v)| {
                    let used = v.users.remove(container);
                    let keep = matches!(v.class, Class::ScratchDir | Class::MemoryDir(_));
                    (used && v.users.is_empty() && !keep).then(|| name.clone())
                })
                .collect();
            names
                .into_iter()
                .filter_map(|n| s.volumes.remove(&n).map(|v| (n, v)))
                .collect()
        };
        for (name, v) in gone {
            if let Some(vm) = vm {
                remove_guest(vm, &name).await;
            }
            self.unbind(Some(&v), &name);
        }
    }

    /// Copies each termination log of `planned` back to its host file: the last
    /// [`TERMINATION_LOG_MAX`] bytes, which is what the kubelet reads. Failures are
    /// logged; the container's exit is recorded either way.
    pub async fn copy_back(&self, vm: &Vm, planned: &[Planned]) {
        for p in planned.iter().filter(|p| p.class == Class::TerminationLog) {
            let read = vm
                .client
                .clone()
                .read_volume(guest::req(
                    pb::ReadVolumeRequest {
                        name: p.volume.clone(),
                        max_bytes: TERMINATION_LOG_MAX,
                    },
                    Duration::from_secs(5),
                ))
                .await;
            let data = match read {
                Ok(r) => r.into_inner().data,
                Err(s) => {
                    tracing::warn!(host = %p.host_path, "reading the termination log back: {s}");
                    continue;
                }
            };
            if let Err(e) = write_back(Path::new(&p.host_path), &data) {
                tracing::warn!(host = %p.host_path, "writing the termination log back: {e}");
            }
        }
    }

    /// Starts (or restarts, on another VM) the task that keeps copied volumes in sync.
    fn watch(self: &Arc<Self>, vm: Vm, pod: &str) {
        let me = Arc::clone(self);
        let pod = pod.to_owned();
        let task = tokio::spawn(async move { me.run(vm, pod).await });
        if let Some(old) = self.lock().watcher.replace(task) {
            old.abort();
        }
    }

    /// Stops the sync task (the pod stopped).
    pub fn stop(&self) {
        if let Some(t) = self.lock().watcher.take() {
            t.abort();
        }
    }

    /// The copied volumes' host paths, to watch.
    fn watched(&self) -> Vec<PathBuf> {
        self.lock()
            .volumes
            .values()
            .filter(|v| v.class == Class::Copied)
            .map(|v| v.host.clone())
            .collect()
    }

    async fn run(self: Arc<Self>, vm: Vm, pod: String) {
        loop {
            let notify = self.changed.notified();
            tokio::pin!(notify);
            notify.as_mut().enable();
            self.rescan(&vm, &pod).await;
            if !vm.running() {
                return;
            }
            let watches = self.watched();
            let inotify = watch_paths(&watches);
            tokio::select! {
                _ = notify => {}
                _ = tokio::time::sleep(RESCAN) => {}
                _ = wait_event(inotify.as_ref()) => {
                    tokio::time::sleep(SETTLE).await;
                }
            }
        }
    }

    /// Copies every copied volume whose host tree changed since its last copy.
    async fn rescan(&self, vm: &Vm, pod: &str) {
        let todo: Vec<(String, PathBuf, Option<u64>)> = self
            .lock()
            .volumes
            .iter()
            .filter(|(_, v)| v.kept_in_sync())
            .map(|(n, v)| (n.clone(), v.host.clone(), v.copied))
            .collect();
        for (name, host, copied) in todo {
            let now = match tree::fingerprint(&host, MAX_COPY_ENTRIES) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(pod, volume = %name, "cannot look at {}: {e}", host.display());
                    continue;
                }
            };
            if copied == Some(now) {
                continue;
            }
            let entries = match tree::read(&host, self.max_copy_bytes(), MAX_COPY_ENTRIES) {
                Ok(e) => self.outside(e),
                Err(e) => {
                    tracing::warn!(pod, volume = %name, "cannot copy {}: {e}", host.display());
                    continue;
                }
            };
            match sync_guest(vm, &name, entries).await {
                Ok(()) => {
                    tracing::debug!(pod, volume = %name, "copied {}", host.display());
                    if let Some(v) = self.lock().volumes.get_mut(&name) {
                        v.copied = Some(now);
                    }
                }
                Err(s) if vm.running() => {
                    tracing::warn!(pod, volume = %name, "copying {}: {s}", host.display());
                }
                Err(_) => return,
            }
        }
    }
}

/// An inotify instance, for tokio (which wants `AsRawFd`).
struct Watches(Inotify);

impl AsRawFd for Watches {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify instance watching `paths` (directories for their entries, files for
/// their content); None when none could be watched.
fn watch_paths(paths: &[PathBuf]) -> Option<AsyncFd<Watches>> {
    if paths.is_empty() {
        return None;
    }
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    let mut any = false;
    for p in paths {
        any |= ino.add_watch(p.as_path(), flags).is_ok();
    }
    if !any {
        return None;
    }
    // SAFETY: the AsyncFd owns the instance, so its descriptor stays open and the
    // same for the AsyncFd's whole life.
    unsafe { AsyncFd::register(Watches(ino)) }.ok()
}

/// Returns when the inotify instance has an event; never without one.
async fn wait_event(ino: Option<&AsyncFd<Watches>>) {
    let Some(ino) = ino else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut ready) = ino.readable().await else {
            return std::future::pending().await;
        };
        match ino.get_ref().0.read_events() {
            Ok(events) if !events.is_empty() => return,
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
            Err(_) => return std::future::pending().await,
        }
    }
}

fn read_host(p: &Planned, max_bytes: u64) -> Result<Vec<pb::VolumeEntry>, VolumeError> {
    tree::read(Path::new(&p.host_path), max_bytes, MAX_COPY_ENTRIES).map_err(|source| {
        VolumeError::Host {
            host: p.host_path.clone(),
            container: p.container_path.clone(),
            source,
        }
    })
}

fn guest_err<'a>(
    call: &'static str,
    p: &'a Planned,
) -> impl FnOnce(tonic::Status) -> VolumeError + 'a {
    move |status| VolumeError::Guest {
        call,
        container: p.container_path.clone(),
        status,
    }
}

async fn sync_guest(
    vm: &Vm,
    name: &str,
    entries: Vec<pb::VolumeEntry>,
) -> Result<(), tonic::Status> {
    vm.client
        .clone()
        .sync_volume(guest::req(
            pb::SyncVolumeRequest {
                name: name.to_owned(),
                entries,
            },
            guest::CALL,
        ))
        .await
        .map(drop)
}

async fn remove_guest(vm: &Vm, name: &str) {
    let removed = vm
        .client
        .clone()
        .remove_volume(guest::req(
            pb::RemoveVolumeRequest {
                name: name.to_owned(),
            },
            guest::CALL,
        ))
        .await;
    if let Err(s) = removed {
        if vm.running() {
            tracing::warn!(volume = %name, "removing the volume from the guest: {s}");
        }
    }
}

/// Replaces the content of the host file at `path` (never through a symlink).
fn write_back(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(data)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copied_volumes_are_copied_in_again() {
        let volume = |class, copied| Volume {
            host: PathBuf::from("/h"),
            class,
            copied,
            users: BTreeSet::new(),
        };
        assert!(volume(Class::Copied, None).kept_in_sync());
        assert!(volume(Class::Copied, Some(7)).kept_in_sync());
        // Re-adopted after a restart: nothing known copied, the message must stay.
        assert!(!volume(Class::TerminationLog, None).kept_in_sync());
        assert!(!volume(Class::ScratchDir, None).kept_in_sync());
    }

    #[test]
    fn write_back_replaces_the_content_and_never_follows_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("log");
        std::fs::write(&f, "old and long").unwrap();
        write_back(&f, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(write_back(&l, b"x").is_err());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
    }

    #[test]
    fn copies_keep_their_owners_inside_a_user_namespace() {
        use vmlet_cri::runtime::IdMap;
        let range = |container_id, host_id, length| IdMap {
            container_id,
            host_id,
            length,
        };
        let v = PodVolumes::new(Some(UserNamespaceConfig {
            uids: vec![range(0, 131_072, 65536)],
            gids: vec![range(0, 131_072, 1000), range(2000, 300_000, 10)],
        }));
        let entry = |uid, gid| pb::VolumeEntry {
            uid,
            gid,
            ..Default::default()
        };
        let ids = |e: Vec<pb::VolumeEntry>| e.iter().map(|e| (e.uid, e.gid)).collect::<Vec<_>>();
        let entries = vec![entry(0, 0), entry(1000, 2005), entry(70_000, 1500)];
        assert_eq!(
            ids(v.outside(entries.clone())),
            [(131_072, 131_072), (132_072, 300_005), (70_000, 1500)]
        );
        assert_eq!(
            ids(PodVolumes::default().outside(entries.clone())),
            ids(entries)
        );
    }

    #[test]
    fn errors_map_to_codes() {
        let e = VolumeError::Host {
            host: "/h".into(),
            container: "/c".into(),
            source: tree::TreeError::TooBig("1 bytes".into()),
        };
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("/c"));
    }
}
