//! The pod's containers inside the guest: vmlet-init's runc.
//!
//! [`Manager`] keeps the table of containers and drives each through
//! created → running → exited → removed. The pieces below it each do one job:
//! [`spec`] checks requests, [`rootfs`] mounts images and writable layers, [`cgroup`]
//! limits and measures, [`device_filter`] limits the devices a cgroup may use,
//! [`process`] forks into namespaces and sets up the child, [`mounts`] builds a new
//! container's mount namespace with the device nodes of [`devnodes`], [`user`]
//! resolves who the process runs as, [`caps`] and [`seccomp`] restrict it, [`stdio`]
//! buffers output and feeds input.
//!
//! Security context, as runc enforces it on a host: capabilities, `no_new_privs`,
//! seccomp, user names and groups from the image, masked and read-only paths,
//! read-only `/sys` and only the standard devices, opened through the cgroup's device
//! filter. A privileged container gets every guest device, a writable `/sys` and no
//! filter (vmletd sends it every capability and no seccomp filter or paths).

pub mod caps;
pub mod cgroup;
pub mod device_filter;
pub mod devnodes;
pub mod mount_attr;
pub mod mounts;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod stdio;
pub mod user;
pub mod userns;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::pid1::{ExitStatus, Reaper};
use cgroup::{Cgroup, CgroupError, Usage};
use device_filter::DeviceFilterError;
use mounts::RootPlan;
use process::{JoinUserNs, MountNs, PidNs, SpawnError, Spawned};
use rootfs::{Drives, Rootfs, RootfsError, RUN_DIR};
use spec::{ProcessSpec, Spec, SpecError};
use stdio::{Chunk, IoError, ProcessIo, StdioError};
use user::{Identity, UserRequest};

/// How long a child may take to set itself up or to exec.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long removal waits for a killed container's processes to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most containers in one guest.
const MAX_CONTAINERS: usize = 1024;

/// The guest directory the host writes files into (`WriteFile`).
pub fn shared_dir() -> PathBuf {
    Path::new(RUN_DIR).join("shared")
}

/// The pod's `/dev/shm`.
pub fn shm_dir() -> PathBuf {
    Path::new(RUN_DIR).join("shm")
}

/// The boot ID a `Restored` call gave the guest (`guest::restore`). When it exists,
/// containers created afterwards see it at `/proc/sys/kernel/random/boot_id`; the
/// kernel's own is the template's and cannot be changed.
pub fn boot_id_file() -> PathBuf {
    Path::new(RUN_DIR).join("boot_id")
}

/// A container request that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No such container or process.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// "container" or "process".
        what: &'static str,
        /// Its ID.
        id: String,
    },
    /// The ID is taken.
    #[error("{what} {id:?} already exists")]
    Exists {
        /// "container" or "process".
        what: &'static str,
        /// Its ID.
        id: String,
    },
    /// The call makes no sense in the current state.
    #[error("{0}")]
    State(String),
    /// Too many containers.
    #[error("too many containers (at most {MAX_CONTAINERS})")]
    TooMany,
    /// The root file system could not be set up.
    #[error("root file system: {0}")]
    Rootfs(#[from] RootfsError),
    /// The cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The device filter could not be attached.
    #[error(transparent)]
    Devices(#[from] DeviceFilterError),
    /// The kernel refused a new limit.
    #[error("the kernel refused the new limit: {0}")]
    Limit(CgroupError),
    /// The streams could not be set up.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// The process could not be started.
    #[error("{0}")]
    Spawn(#[from] SpawnError),
    /// A stdio operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A wait ran out of time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Forked, waiting for start.
    Created,
    /// Running its program.
    Running,
    /// Gone.
    Exited,
}

/// A process's status.
#[derive(Debug, Clone)]
pub struct Status {
    /// Its state.
    pub state: State,
    /// Its pid.
    pub pid: Pid,
    /// How it ended.
    pub exit: Option<ExitStatus>,
    /// Why it ended ("Completed", "Error", "OOMKilled", "StartError").
    pub reason: String,
    /// Details.
    pub message: String,
    /// When it was created, started and finished.
    pub created_at: SystemTime,
    /// When it was started.
    pub started_at: Option<SystemTime>,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
}

/// One process of a container (the main one or an exec).
#[derive(Debug)]
pub struct Process {
    /// Its streams.
    pub io: ProcessIo,
    status: Mutex<Status>,
    exited: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Process {
    fn new(pid: Pid, io: ProcessIo) -> Arc<Process> {
        Arc::new(Process {
            io,
            status: Mutex::new(Status {
                state: State::Created,
                pid,
                exit: None,
                reason: String::new(),
                message: String::new(),
                created_at: SystemTime::now(),
                started_at: None,
                finished_at: None,
            }),
            exited: watch::Sender::new(false),
        })
    }

    /// Its status now.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    fn finish(&self, exit: Option<ExitStatus>, reason: &str, message: String) {
        {
            let mut s = lock(&self.status);
            if s.state == State::Exited {
                return;
            }
            s.state = State::Exited;
            s.exit = exit;
            s.reason = reason.to_owned();
            s.message = message;
            s.finished_at = Some(SystemTime::now());
        }
        self.exited.send_replace(true);
    }

    /// Waits until it has exited, at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<Status, Error> {
        let mut rx = self.exited.subscribe();
        let exited = tokio::time::timeout(timeout, rx.wait_for(|e| *e))
            .await
            .is_ok();
        if exited {
            Ok(self.status())
        } else {
            Err(Error::Timeout("the process to exit".into()))
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), Error> {
        let s = lock(&self.status);
        if s.state == State::Exited {
            return Err(Error::State("the process has already exited".into()));
        }
        // The reaper runs on this thread: the pid cannot be reaped (and reused) between
        // the check above and the kill.
        kill(s.pid, signal).map_err(|e| Error::Sys {
            what: format!("kill {}", s.pid),
            source: e.into(),
        })
    }
}

/// A container.
#[derive(Debug)]
pub struct Container {
    /// Its ID.
    pub id: String,
    spec: Spec,
    cgroup: Cgroup,
    rootfs: Mutex<Option<Rootfs>>,
    /// The main process.
    pub main: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    spawned: tokio::sync::Mutex<Option<Spawned>>,
}

impl Container {
    /// Its exec processes' IDs.
    pub fn exec_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.execs).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A process: the main one for `exec_id` "".
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, Error> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.main));
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "process",
                id: exec_id.to_owned(),
            })
    }

    /// Resource use now.
    pub fn usage(&self) -> (Usage, (u64, u64)) {
        let upper = lock(&self.rootfs).as_ref().and_then(|r| r.upper.clone());
        let disk = upper.map_or((0, 0), |u| rootfs::disk_usage(&u));
        (self.cgroup.usage(), disk)
    }
}

#[derive(Debug, Default)]
struct Table {
    containers: HashMap<String, Arc<Container>>,
    /// IDs being created (not yet in `containers`).
    creating: HashSet<String>,
    drives: Drives,
}

/// All containers of the pod.
#[derive(Debug)]
pub struct Manager {
    table: Mutex<Table>,
    reaper: Arc<Reaper>,
    own_pid_ns: OwnedFd,
    pod_pid_ns: Mutex<Option<OwnedFd>>,
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

impl Manager {
    /// Prepares the guest for containers: cgroup controllers, the pod's `/dev/shm` and
    /// shared directory.
    pub fn new(reaper: Arc<Reaper>) -> Result<Manager, Error> {
        cgroup::init_hierarchy()?;
        for dir in [shared_dir(), shm_dir()] {
            std::fs::create_dir_all(&dir).map_err(sys(format!("create {}", dir.display())))?;
        }
        let shm = shm_dir();
        nix::mount::mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| Error::Sys {
            what: "mount the pod's /dev/shm".into(),
            source: e.into(),
        })?;
        Ok(Manager {
            table: Mutex::new(Table::default()),
            reaper,
            own_pid_ns: process::own_pid_ns().map_err(sys("open init's PID namespace"))?,
            pod_pid_ns: Mutex::new(None),
        })
    }

    /// Looks a container up.
    pub fn get(&self, id: &str) -> Result<Arc<Container>, Error> {
        lock(&self.table)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "container",
                id: id.to_owned(),
            })
    }

    /// All containers, by ID.
    pub fn list(&self) -> Vec<Arc<Container>> {
        let mut all: Vec<_> = lock(&self.table).containers.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn pod_pid_ns(&self) -> Result<std::os::fd::BorrowedFd<'_>, Error> {
        let mut ns = lock(&self.pod_pid_ns);
        if ns.is_none() {
            let pid = process::spawn_pid_ns_holder(process::borrow(&self.own_pid_ns))?;
            // Its status nobody needs; registering keeps the table honest.
            drop(self.reaper.register(pid));
            *ns = Some(process::open_ns(pid, "pid").map_err(sys("open the pod PID namespace"))?);
        }
        let fd = ns.as_ref().map(|fd| {
            // SAFETY: the descriptor lives in `self.pod_pid_ns`, which is never cleared
            // once set, so it outlives the borrow of `self`.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(fd)) }
        });
        fd.ok_or_else(|| Error::State("no pod PID namespace".into()))
    }

    /// Creates a container; returns its pid and the identity its process got.
    pub async fn create(
        &self,
        spec: vmlet_proto::agent::ContainerSpec,
    ) -> Result<(Pid, Identity), Error> {
        let spec = Spec::from_proto(spec)?;
        {
            let mut t = lock(&self.table);
            if t.containers.contains_key(&spec.id) || t.creating.contains(&spec.id) {
                return Err(Error::Exists {
                    what: "container",
                    id: spec.id,
                });
            }
            if t.containers.len() + t.creating.len() >= MAX_CONTAINERS {
                return Err(Error::TooMany);
            }
            t.creating.insert(spec.id.clone());
        }
        let id = spec.id.clone();
        let result = self.create_reserved(spec).await;
        let mut t = lock(&self.table);
        t.creating.remove(&id);
        let (container, identity) = result?;
        let pid = container.main.status().pid;
        t.containers.insert(id, container);
        Ok((pid, identity))
    }

    async fn create_reserved(&self, mut spec: Spec) -> Result<(Arc<Container>, Identity), Error> {
        let cgroup = Cgroup::create(&spec.id, &spec.resources)?;
        if !spec.privileged {
            if let Err(e) = device_filter::attach(cgroup.path(), &device_filter::DEFAULT_RULES) {
                cgroup.remove();
                return Err(e.into());
            }
        }
        let rootfs = {
            let mut t = lock(&self.table);
            t.drives
                .mount_rootfs(&spec.id, &spec.rootfs, spec.userns.as_ref())
        };
        let rootfs = match rootfs {
            Ok(r) => r,
            Err(e) => {
                cgroup.remove();
                return Err(e.into());
            }
        };
        let undo = |rootfs: Rootfs, cgroup: &Cgroup| {
            lock(&self.table).drives.unmount_rootfs(rootfs);
            cgroup.remove();
        };
        match self.spawn_main(&spec, &rootfs, &cgroup).await {
            Ok((process, spawned, identity)) => {
                // Execs without a user of their own run as the container's process.
                spec.process.user = UserRequest::exact(&identity);
                let container = Arc::new(Container {
                    id: spec.id.clone(),
                    spec,
                    cgroup,
                    rootfs: Mutex::new(Some(rootfs)),
                    main: process,
                    execs: Mutex::new(HashMap::new()),
                    spawned: tokio::sync::Mutex::new(Some(spawned)),
                });
                Ok((container, identity))
            }
            Err(e) => {
                undo(rootfs, &cgroup);
                Err(e)
            }
        }
    }

    async fn spawn_main(
        &self,
        spec: &Spec,
        rootfs: &Rootfs,
        cgroup: &Cgroup,
    ) -> Result<(Arc<Process>, Spawned, Identity), Error> {
        let p = &spec.process;
        let (io, fds) = ProcessIo::new(p.terminal, p.open_stdin, p.size)?;
        let shared = shared_dir();
        let etc_files = [
            (shared.join("hosts"), "hosts"),
            (shared.join("resolv.conf"), "resolv.conf"),
            (shared.join("hostname"), "hostname"),
        ];
        let shm = shm_dir();
        let boot_id = boot_id_file();
        let plan = RootPlan {
            root: &rootfs.root,
            mounts: &spec.mounts,
            shm: &shm,
            etc_files: &etc_files,
            boot_id: boot_id.is_file().then_some(boot_id.as_path()),
            readonly: spec.rootfs.readonly,
            privileged: spec.privileged,
            masked_paths: &spec.masked_paths,
            readonly_paths: &spec.readonly_paths,
            idmap: rootfs.userns.as_ref().map(process::borrow),
        };
        let userns = JoinUserNs::of(rootfs.userns.as_ref(), spec.userns.as_ref());
        // A target container's namespace, held open until the process has joined it.
        let target_ns = match spec.target_pid_namespace.as_str() {
            "" => None,
            t => {
                let target = self.get(t)?;
                let main = target.main.status();
                let not_running = || Error::State(format!("target container {t:?} is not running"));
                if main.state != State::Running {
                    return Err(not_running());
                }
                Some(process::open_ns(main.pid, "pid").map_err(|_| not_running())?)
            }
        };
        let pid_ns = match &target_ns {
            Some(fd) => PidNs::Join(process::borrow(fd)),
            None if spec.share_pod_pid_namespace => PidNs::Join(self.pod_pid_ns()?),
            None => PidNs::New,
        };
        let spawned = process::spawn(
            p,
            pid_ns,
            MountNs::New(plan),
            userns,
            fds,
            true,
            process::borrow(&self.own_pid_ns),
        )?;
        let exit = self.reaper.register(spawned.pid);
        let process = Process::new(spawned.pid, io);
        let setup = async {
            cgroup.add(spawned.pid)?;
            let identity = spawned.ready(SETUP_TIMEOUT).await?;
            process.io.receive_terminal().await?;
            Ok::<Identity, Error>(identity)
        }
        .await;
        let identity = match setup {
            Ok(identity) => identity,
            Err(e) => {
                let _ = kill(spawned.pid, Signal::SIGKILL);
                // The reaper collects it; nobody waits.
                drop(exit);
                return Err(e);
            }
        };
        process.io.start_pumps();
        let watcher = Arc::clone(&process);
        let cgroup_path = cgroup.path().to_owned();
        tokio::spawn(async move {
            let status = exit.await.ok();
            let oom = std::fs::read_to_string(cgroup_path.join("memory.events"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| {
                            l.strip_prefix("oom_kill ")
                                .map(|v| v.trim().parse::<u64>().ok())
                        })
                        .flatten()
                })
                .unwrap_or(0)
                > 0;
            let reason = match status {
                _ if oom => "OOMKilled",
                Some(ExitStatus { code: 0, .. }) => "Completed",
                _ => "Error",
            };
            watcher.finish(status, reason, String::new());
        });
        Ok((process, spawned, identity))
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), Error> {
        let c = self.get(id)?;
        let mut spawned = c.spawned.lock().await;
        let Some(s) = spawned.as_mut() else {
            return Err(Error::State(format!(
                "container {id:?} was already started"
            )));
        };
        if c.main.status().state != State::Created {
            return Err(Error::State(format!(
                "container {id:?} is not in created state"
            )));
        }
        lock(&c.main.status).started_at = Some(SystemTime::now());
        let result = s.go(SETUP_TIMEOUT).await;
        *spawned = None;
        match result {
            Ok(()) => {
                let mut st = lock(&c.main.status);
                if st.state == State::Created {
                    st.state = State::Running;
                }
                Ok(())
            }
            Err(e) => {
                c.main.finish(None, "StartError", e.to_string());
                let _ = c.cgroup.kill();
                Err(Error::State(format!("cannot start container {id:?}: {e}")))
            }
        }
    }

    /// Mounts image drive `serial` (erofs) for an image volume, or counts one more user
    /// of it; returns where it is mounted.
    pub fn image_volume(&self, serial: &str) -> Result<PathBuf, Error> {
        spec::check_id("image serial", serial)?;
        let spec = spec::RootfsSpec {
            image_serial: serial.to_owned(),
            image_fstype: spec::Fstype::Erofs,
            image_subdir: PathBuf::new(),
            scratch_serial: None,
            readonly: true,
        };
        Ok(lock(&self.table).drives.image_mount(&spec)?)
    }

    /// One user less of image drive `serial` (unmounted with its last).
    pub fn release_image_volume(&self, serial: &str) {
        lock(&self.table).drives.release_image_mount(serial);
    }

    /// Where scratch disk `serial` is mounted (mounting it if no container has yet).
    pub fn scratch_dir(&self, serial: &str) -> Result<PathBuf, Error> {
        spec::check_id("scratch serial", serial)?;
        Ok(lock(&self.table).drives.scratch_dir(serial)?)
    }

    /// Changes a created or running container's cgroup limits: those `resources` sets,
    /// with the checks and the code of creation.
    pub fn update_resources(
        &self,
        id: &str,
        resources: vmlet_proto::agent::Resources,
    ) -> Result<(), Error> {
        let resources = spec::resources(resources)?;
        let c = self.get(id)?;
        if c.main.status().state == State::Exited {
            return Err(Error::State(format!(
                "container {id:?} has exited: its limits can no longer change"
            )));
        }
        c.cgroup.set_limits(&resources).map_err(|e| {
            if e.is_refused_limit() {
                Error::Limit(e)
            } else {
                Error::Cgroup(e)
            }
        })
    }

    /// Runs another process in a running container; returns its pid.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: vmlet_proto::agent::Process,
    ) -> Result<Pid, Error> {
        spec::check_id("exec ID", exec_id)?;
        let c = self.get(id)?;
        let p: ProcessSpec = spec::process_spec(process, Some(&c.spec.process))?;
        let main = c.main.status();
        if main.state != State::Running {
            return Err(Error::State(format!("container {id:?} is not running")));
        }
        {
            let execs = lock(&c.execs);
            if execs.contains_key(exec_id) {
                return Err(Error::Exists {
                    what: "process",
                    id: exec_id.to_owned(),
                });
            }
        }
        let not_running = |_| Error::State(format!("container {id:?} is not running"));
        let pid_ns = process::open_ns(main.pid, "pid").map_err(not_running)?;
        let mnt_ns = process::open_ns(main.pid, "mnt").map_err(not_running)?;
        // The container's user namespace, if it has one (a copy of its descriptor:
        // the container may be removed meanwhile).
        let userns_fd =
            match lock(&c.rootfs).as_ref().and_then(|r| r.userns.as_ref()) {
                Some(fd) => Some(fd.try_clone().map_err(|e| {
                    Error::State(format!("container {id:?}: its user namespace: {e}"))
                })?),
                None => None,
            };
        let userns = JoinUserNs::of(userns_fd.as_ref(), c.spec.userns.as_ref());
        let (io, fds) = ProcessIo::new(p.terminal, p.open_stdin, p.size)?;
        let mut spawned = process::spawn(
            &p,
            PidNs::Join(process::borrow(&pid_ns)),
            MountNs::Join(process::borrow(&mnt_ns)),
            userns,
            fds,
            true,
            process::borrow(&self.own_pid_ns),
        )?;
        let exit = self.reaper.register(spawned.pid);
        let proc = Process::new(spawned.pid, io);
        lock(&c.execs).insert(exec_id.to_owned(), Arc::clone(&proc));
        let started = async {
            c.cgroup.add(spawned.pid)?;
            spawned.ready(SETUP_TIMEOUT).await?;
            proc.io.receive_terminal().await?;
            lock(&proc.status).started_at = Some(SystemTime::now());
            spawned.go(SETUP_TIMEOUT).await?;
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = started {
            let _ = kill(spawned.pid, Signal::SIGKILL);
            lock(&c.execs).remove(exec_id);
            drop(exit);
            return Err(e);
        }
        {
            let mut st = lock(&proc.status);
            if st.state == State::Created {
                st.state = State::Running;
            }
        }
        proc.io.start_pumps();
        let watcher = Arc::clone(&proc);
        tokio::spawn(async move {
            let status = exit.await.ok();
            let reason = match status {
                Some(ExitStatus { code: 0, .. }) => "Completed",
                _ => "Error",
            };
            watcher.finish(status, reason, String::new());
        });
        Ok(spawned.pid)
    }

    /// Sends `signal` to a process.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), Error> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| {
                Error::Spec(SpecError::Range {
                    what: "signal",
                    value: u64::from(signal),
                    range: "1..31",
                })
            })?;
        self.get(id)?.process(exec_id)?.signal(sig)
    }

    /// Removes a container: kills it first with `force`, else it must not be running.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), Error> {
        let c = self.get(id)?;
        let state = c.main.status().state;
        if state != State::Exited {
            if !force {
                return Err(Error::State(format!(
                    "container {id:?} is {}; stop it first or remove it with force",
                    if state == State::Running {
                        "running"
                    } else {
                        "created"
                    }
                )));
            }
            let _ = c.cgroup.kill();
            // A created container's process waits on its start pipe: kill it directly too.
            let _ = kill(c.main.status().pid, Signal::SIGKILL);
            c.main.wait(KILL_TIMEOUT).await?;
        }
        // Exec processes may outlive a main process that shares the pod PID namespace.
        let _ = c.cgroup.kill();
        let execs: Vec<_> = lock(&c.execs).values().cloned().collect();
        for e in execs {
            let _ = e.wait(KILL_TIMEOUT).await;
        }
        *c.spawned.lock().await = None;
        if let Some(r) = lock(&c.rootfs).take() {
            lock(&self.table).drives.unmount_rootfs(r);
        }
        c.cgroup.remove();
        lock(&self.table).containers.remove(id);
        Ok(())
    }

    /// Reads a process's output.
    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
        offset: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Chunk, Error> {
        let p = self.get(id)?.process(exec_id)?;
        let out = if stderr { &p.io.stderr } else { &p.io.stdout };
        Ok(out.read(offset, max, wait).await)
    }

    /// Forgets an exited exec process once its status has been collected.
    pub fn forget_exec(&self, id: &str, exec_id: &str) {
        if exec_id.is_empty() {
            return;
        }
        if let Ok(c) = self.get(id) {
            let mut execs = lock(&c.execs);
            let done = execs.get(exec_id).is_some_and(|p| {
                p.status().state == State::Exited && p.io.stdout.is_eof() && p.io.stderr.is_eof()
            });
            if done {
                execs.remove(exec_id);
            }
        }
    }

    /// Stops every container: `SIGTERM`, then `SIGKILL` to those still running after
    /// `grace` (one grace period for all, not one each).
    pub async fn stop_all(&self, grace: Duration) {
        let all = self.list();
        for c in &all {
            let _ = c.main.signal(Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        for c in &all {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if c.main.wait(left).await.is_err() {
                let _ = c.cgroup.kill();
                let _ = c.main.wait(KILL_TIMEOUT).await;
            }
        }
    }
}

/// Whether a spawn error is the child's report about the request (a missing program,
/// a bad mount source, ...) rather than a failure of the guest.
pub fn spawn_error_is_child(e: &SpawnError) -> bool {
    matches!(e, SpawnError::Child(_))
}
