//! An in-memory [`Hypervisor`] for the runtime's unit tests: each "VM" is a scriptable
//! guest agent (a real tonic server of the `vmlet.agent.v1` protocol on a unix socket
//! in a temporary directory) and a control whose drive swaps, shutdowns and kills are
//! recorded. Tests reach into a VM's state through [`FakeHypervisor::vm`] to make
//! calls fail, make the guest silent, end a container, or kill the VMM; a VM prepared
//! for adoption with a silent guest fails [`Hypervisor::adopt`] as a guest that never
//! answers does, its VMM left running until [`Hypervisor::kill_stray`] kills it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};
use tonic::transport::{Endpoint, Server, Uri};
use tonic::{Code, Request, Response, Status};
use vmlet_proto::agent as pb;
use vmlet_proto::agent::agent_server::{Agent, AgentServer};
use vmlet_vmm_api::control::{BlockCounters, CountersReply};

use super::{Hypervisor, SandboxError, Vm, VmControl, VmmCommand, VmmExit};

/// What one fake VM's guest knows and how it misbehaves.
#[derive(Debug, Default)]
pub struct GuestState {
    /// Containers by ID, with their main process.
    pub containers: BTreeMap<String, pb::ProcessStatus>,
    /// Calls (by RPC name, e.g. "CreateContainer") that fail with this code.
    pub fail: HashMap<&'static str, Code>,
    /// The guest answers nothing (every call waits out its deadline).
    pub silent: bool,
    /// Every call received, by RPC name, in order.
    pub calls: Vec<&'static str>,
    /// Output each container's stdout returns once, then end of stream.
    pub output: HashMap<String, Vec<u8>>,
    /// Exec processes never end.
    pub exec_hangs: bool,
    /// Output reads never answer (a stuck log copy).
    pub silent_reads: bool,
    /// Pod volumes by name: the entries of a copied one (empty for an empty one).
    pub volumes: BTreeMap<String, Vec<pb::VolumeEntry>>,
    /// Every `Restored` request received, in order.
    pub restored: Vec<pb::RestoredRequest>,
    /// Snapshots the VMM took.
    pub snapshots: u32,
}

/// One fake VM, as the test sees it.
#[derive(Debug, Clone)]
pub struct FakeVm {
    /// Its guest.
    pub guest: Arc<Mutex<GuestState>>,
    /// Woken when a container's state changes.
    pub changed: Arc<Notify>,
    /// Drive swaps: (drive, file).
    pub swaps: Arc<Mutex<Vec<(String, PathBuf)>>>,
    /// Shutdown requests.
    pub shutdowns: Arc<AtomicU32>,
    exit: Arc<watch::Sender<Option<VmmExit>>>,
    /// Where its vsock and control sockets are (the pod's paths).
    pub control: PathBuf,
}

impl FakeVm {
    /// The VMM ends as `exit` says (a crash, a kill).
    pub fn die(&self, exit: VmmExit) {
        self.exit.send_replace(Some(exit));
    }

    /// Whether its VMM still runs.
    pub fn running(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Container `id`'s main process exits with `code` and `reason`.
    pub fn exit_container(&self, id: &str, code: i32, reason: &str) {
        if let Some(p) = lock(&self.guest).containers.get_mut(id) {
            p.state = pb::ProcessState::Exited as i32;
            p.exit_code = code;
            p.reason = reason.to_owned();
            p.finished_at_ns = 1;
        }
        self.changed.notify_waiters();
    }

    /// Calls the guest received, by RPC name.
    pub fn calls(&self) -> Vec<&'static str> {
        lock(&self.guest).calls.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake hypervisor: VMs by their control socket path.
#[derive(Debug, Default)]
pub struct FakeHypervisor {
    vms: Mutex<Vec<FakeVm>>,
    next_pid: AtomicU32,
    /// Boots fail with this (the VMM exits at once).
    pub fail_boot: Mutex<Option<String>>,
    /// Restores (a VMM with `--restore`) fail as with a damaged template.
    pub fail_restore: Mutex<bool>,
    /// How long a boot takes.
    pub boot_time: Mutex<Duration>,
    /// Boots under way now, and the most there ever were at once.
    pub booting: AtomicU32,
    /// See `booting`.
    pub most_booting: AtomicU32,
    /// When each boot was asked for (by the tokio clock, which a test may pause).
    pub boot_attempts: Mutex<Vec<tokio::time::Instant>>,
    /// The timeout each boot was given, in order.
    pub boot_timeouts: Mutex<Vec<Duration>>,
    /// What each boot was asked to start, in order.
    pub boot_commands: Mutex<Vec<VmmCommand>>,
    /// Stray VMMs killed, by control path.
    pub strays_killed: Mutex<Vec<PathBuf>>,
    /// Guests that [`Hypervisor::adopt`] finds running, by control socket path: what
    /// a previous daemon's VMs are to the next one.
    adoptable: Mutex<BTreeMap<PathBuf, GuestState>>,
    sockets: Mutex<Option<tempfile::TempDir>>,
}

impl FakeHypervisor {
    /// Makes the VM serving `control` adoptable, its guest in `guest`'s state.
    pub fn prepare_adoptable(&self, control: &Path, guest: GuestState) {
        lock(&self.adoptable).insert(control.to_owned(), guest);
    }

    /// A fake VM by (a suffix of) its control socket path: the pod ID finds it.
    pub fn vm(&self, pod_id: &str) -> Option<FakeVm> {
        lock(&self.vms)
            .iter()
            .rev()
            .find(|v| v.control.to_string_lossy().contains(pod_id))
            .cloned()
    }

    /// Every VM started or adopted, oldest first.
    pub fn all(&self) -> Vec<FakeVm> {
        lock(&self.vms).clone()
    }

    fn socket_dir(&self) -> Result<PathBuf, SandboxError> {
        let mut dir = lock(&self.sockets);
        if dir.is_none() {
            *dir = Some(tempfile::tempdir().map_err(|source| SandboxError::Io {
                op: "create",
                path: "a temporary directory".into(),
                source,
            })?);
        }
        Ok(dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_default())
    }

    /// A fake VM serving `control` whose guest is in `guest`'s state.
    pub async fn start(&self, control: &Path, guest: GuestState) -> Result<Vm, SandboxError> {
        let pid = 1_000_000 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        let socket = self.socket_dir()?.join(format!("agent-{pid}.sock"));
        let (exit_tx, exit_rx) = watch::channel(None);
        let fake = FakeVm {
            guest: Arc::new(Mutex::new(guest)),
            changed: Arc::new(Notify::new()),
            swaps: Arc::default(),
            shutdowns: Arc::default(),
            exit: Arc::new(exit_tx),
            control: control.to_owned(),
        };
        let listener =
            tokio::net::UnixListener::bind(&socket).map_err(|source| SandboxError::Io {
                op: "bind",
                path: socket.clone(),
                source,
            })?;
        let server = FakeAgent { vm: fake.clone() };
        let mut exited = exit_rx.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = exited.wait_for(Option::is_some).await;
            };
            let _ = Server::builder()
                .add_service(AgentServer::new(server))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    stop,
                )
                .await;
        });
        let path = socket.clone();
        let channel = Endpoint::from_static("http://fake-guest").connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }),
        );
        lock(&self.vms).push(fake.clone());
        let control = Arc::new(FakeControl { vm: fake });
        Ok(Vm::new(
            pid,
            super::guest::client(channel),
            control,
            exit_rx,
        ))
    }
}

impl Hypervisor for FakeHypervisor {
    fn boot<'a>(
        &'a self,
        cmd: &'a VmmCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vm, SandboxError>> {
        Box::pin(async move {
            // As a real VMM, which opens its console first; a missing pod directory
            // shows in the tests that look for the console.
            let _ = std::fs::write(&cmd.console, "fake guest booting\n");
            lock(&self.boot_attempts).push(tokio::time::Instant::now());
            lock(&self.boot_timeouts).push(timeout);
            lock(&self.boot_commands).push(cmd.clone());
            let now = self.booting.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_booting.fetch_max(now, Ordering::SeqCst);
            let boot_time = *lock(&self.boot_time);
            tokio::time::sleep(boot_time.min(timeout)).await;
            self.booting.fetch_sub(1, Ordering::SeqCst);
            if boot_time > timeout {
                // As a real boot: the guest did not answer in time, the VMM is killed.
                return Err(SandboxError::GuestTimeout {
                    timeout,
                    last: "the fake guest is still booting".into(),
                });
            }
            if cmd.restore.is_some() && *lock(&self.fail_restore) {
                return Err(SandboxError::VmmExited("the snapshot is corrupted".into()));
            }
            if let Some(why) = lock(&self.fail_boot).clone() {
                return Err(SandboxError::VmmExited(why));
            }
            self.start(&cmd.control, GuestState::default()).await
        })
    }

    fn adopt<'a>(
        &'a self,
        _pid: u32,
        control: &'a Path,
        _vsock: &'a Path,
        _exit_record: &'a Path,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vm, SandboxError>> {
        Box::pin(async move {
            // The VM the test prepared for this pod with `prepare_adoptable`, if any.
            let prepared = lock(&self.adoptable)
                .remove(control)
                .ok_or_else(|| SandboxError::VmmExited("no such VMM".into()))?;
            let silent = prepared.silent;
            let vm = self.start(control, prepared).await?;
            if silent {
                // Its VMM runs but its guest never answers: the real adopt gives up
                // after `timeout` and drops the handle, leaving the VMM running (a
                // stray). The fake gives up at once.
                return Err(SandboxError::GuestTimeout {
                    timeout,
                    last: format!("pid {}: the guest does not answer", vm.pid),
                });
            }
            Ok(vm)
        })
    }

    fn kill_stray<'a>(&'a self, control: &'a Path) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            lock(&self.strays_killed).push(control.to_owned());
            for vm in lock(&self.vms).iter().filter(|v| v.control == control) {
                if vm.running() {
                    vm.die(VmmExit::Signal(libc::SIGKILL));
                }
            }
        })
    }
}

#[derive(Debug)]
struct FakeControl {
    vm: FakeVm,
}

impl VmControl for FakeControl {
    fn swap_drive<'a>(
        &'a self,
        id: &'a str,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            if lock(&self.vm.guest).fail.contains_key("SwapDrive") {
                return Err(SandboxError::Control {
                    socket: self.vm.control.clone(),
                    reason: "swap_drive refused".into(),
                });
            }
            lock(&self.vm.swaps).push((id.to_owned(), path.to_owned()));
            Ok(())
        })
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(async move {
            self.vm.shutdowns.fetch_add(1, Ordering::Relaxed);
            self.vm.die(VmmExit::Code(0));
            Ok(())
        })
    }

    fn counters(&self) -> BoxFuture<'_, Result<CountersReply, SandboxError>> {
        // A drive swap is the one disk I/O a fake VM does.
        let swaps = lock(&self.vm.swaps).len() as u64;
        let mut c = CountersReply::default();
        c.exits.insert("mmio_write".into(), swaps);
        c.block.insert(
            "scratch".into(),
            BlockCounters {
                queue_notifications: swaps,
                ..BlockCounters::default()
            },
        );
        Box::pin(async move { Ok(c) })
    }

    fn snapshot<'a>(
        &'a self,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<vmlet_vmm_api::control::SnapshotReply, SandboxError>> {
        Box::pin(async move {
            // The files a VMM writes, small: what vmletd does with them is tested.
            let io = |source| SandboxError::Io {
                op: "write a fake snapshot in",
                path: dir.to_owned(),
                source,
            };
            for (file, data) in [
                ("state", &b"fake state"[..]),
                ("memory", &b"fake memory"[..]),
            ] {
                std::fs::write(dir.join(file), data).map_err(io)?;
            }
            lock(&self.vm.guest).snapshots += 1;
            Ok(vmlet_vmm_api::control::SnapshotReply {
                memory_bytes: 11,
                memory_file_bytes: 4096,
                state_bytes: 10,
                took_ms: 1,
            })
        })
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(async move { Ok(()) })
    }

    fn kill(&self) {
        self.vm.die(VmmExit::Signal(libc::SIGKILL));
    }
}

/// The guest agent of a fake VM.
struct FakeAgent {
    vm: FakeVm,
}

impl FakeAgent {
    /// Records the call; fails it as the test asked; a silent guest never answers.
    async fn enter(&self, call: &'static str) -> Result<(), Status> {
        let (silent, fail) = {
            let mut g = lock(&self.vm.guest);
            g.calls.push(call);
            (g.silent, g.fail.get(call).copied())
        };
        if silent {
            std::future::pending::<()>().await;
        }
        match fail {
            Some(code) => Err(Status::new(code, format!("{call} fails (test)"))),
            None => Ok(()),
        }
    }

    fn status(&self, id: &str) -> Result<pb::ProcessStatus, Status> {
        lock(&self.vm.guest)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))
    }

    fn set_state(&self, id: &str, state: pb::ProcessState) -> Result<(), Status> {
        let mut g = lock(&self.vm.guest);
        let p = g
            .containers
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        p.state = state as i32;
        drop(g);
        self.vm.changed.notify_waiters();
        Ok(())
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The call's deadline, as the guest agent's server would read it.
fn deadline<T>(req: &Request<T>) -> Duration {
    vmlet_cri::runtime::grpc_timeout(req.metadata()).unwrap_or(Duration::from_secs(60))
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn health(&self, _: Request<pb::HealthRequest>) -> Reply<pb::HealthResponse> {
        self.enter("Health").await?;
        Ok(Response::new(pb::HealthResponse {
            protocol: "v1".into(),
            ..Default::default()
        }))
    }

    async fn configure_guest(
        &self,
        _: Request<pb::ConfigureGuestRequest>,
    ) -> Reply<pb::ConfigureGuestResponse> {
        self.enter("ConfigureGuest").await?;
        Ok(Response::new(pb::ConfigureGuestResponse {}))
    }

    async fn restored(&self, r: Request<pb::RestoredRequest>) -> Reply<pb::RestoredResponse> {
        self.enter("Restored").await?;
        lock(&self.vm.guest).restored.push(r.into_inner());
        Ok(Response::new(pb::RestoredResponse {
            block_devices_flushed: 3,
            neighbours_flushed: 1,
        }))
    }

    async fn create_container(
        &self,
        r: Request<pb::CreateContainerRequest>,
    ) -> Reply<pb::CreateContainerResponse> {
        self.enter("CreateContainer").await?;
        let id = r.into_inner().spec.unwrap_or_default().container_id;
        let status = pb::ProcessStatus {
            state: pb::ProcessState::Created as i32,
            pid: 42,
            ..Default::default()
        };
        lock(&self.vm.guest).containers.insert(id, status);
        Ok(Response::new(pb::CreateContainerResponse {
            pid: 42,
            user: None,
        }))
    }

    async fn start_container(
        &self,
        r: Request<pb::StartContainerRequest>,
    ) -> Reply<pb::StartContainerResponse> {
        self.enter("StartContainer").await?;
        self.set_state(&r.into_inner().container_id, pb::ProcessState::Running)?;
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    async fn exec_process(
        &self,
        _: Request<pb::ExecProcessRequest>,
    ) -> Reply<pb::ExecProcessResponse> {
        self.enter("ExecProcess").await?;
        Ok(Response::new(pb::ExecProcessResponse::default()))
    }

    async fn signal_process(
        &self,
        r: Request<pb::SignalProcessRequest>,
    ) -> Reply<pb::SignalProcessResponse> {
        self.enter("SignalProcess").await?;
        let r = r.into_inner();
        if !r.exec_id.is_empty() {
            return Ok(Response::new(pb::SignalProcessResponse {}));
        }
        let p = self.status(&r.container_id)?;
        if p.state == pb::ProcessState::Exited as i32 {
            return Err(Status::failed_precondition("already exited"));
        }
        let code = 128 + i32::try_from(r.signal).unwrap_or(0);
        self.vm.exit_container(&r.container_id, code, "Error");
        Ok(Response::new(pb::SignalProcessResponse {}))
    }

    async fn wait_process(
        &self,
        r: Request<pb::WaitProcessRequest>,
    ) -> Reply<pb::WaitProcessResponse> {
        self.enter("WaitProcess").await?;
        let limit = deadline(&r);
        let r = r.into_inner();
        if !r.exec_id.is_empty() && !lock(&self.vm.guest).exec_hangs {
            // Exec processes end at once, with nothing to say.
            return Ok(Response::new(pb::WaitProcessResponse {
                status: Some(pb::ProcessStatus {
                    state: pb::ProcessState::Exited as i32,
                    reason: "Completed".into(),
                    ..Default::default()
                }),
            }));
        }
        let exec = !r.exec_id.is_empty();
        let wait = async {
            if exec {
                // A hanging exec (only those reach here).
                std::future::pending::<()>().await;
            }
            loop {
                let changed = self.vm.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let p = self.status(&r.container_id)?;
                if p.state == pb::ProcessState::Exited as i32 {
                    return Ok(p);
                }
                changed.await;
            }
        };
        // Ends a little before the caller's deadline, as vmlet-init does.
        match tokio::time::timeout(limit.mul_f32(0.9), wait).await {
            Ok(Ok(p)) => Ok(Response::new(pb::WaitProcessResponse { status: Some(p) })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Status::deadline_exceeded("still running")),
        }
    }

    async fn remove_container(
        &self,
        r: Request<pb::RemoveContainerRequest>,
    ) -> Reply<pb::RemoveContainerResponse> {
        self.enter("RemoveContainer").await?;
        let id = r.into_inner().container_id;
        if lock(&self.vm.guest).containers.remove(&id).is_none() {
            return Err(Status::not_found(format!("container {id:?} not found")));
        }
        self.vm.changed.notify_waiters();
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        r: Request<pb::ContainerStatusRequest>,
    ) -> Reply<pb::ContainerStatusResponse> {
        self.enter("ContainerStatus").await?;
        let id = r.into_inner().container_id;
        let main = self.status(&id)?;
        Ok(Response::new(pb::ContainerStatusResponse {
            status: Some(pb::ContainerStatus {
                container_id: id,
                main: Some(main),
                exec_ids: Vec::new(),
            }),
        }))
    }

    async fn list_containers(
        &self,
        _: Request<pb::ListContainersRequest>,
    ) -> Reply<pb::ListContainersResponse> {
        self.enter("ListContainers").await?;
        let containers = lock(&self.vm.guest)
            .containers
            .iter()
            .map(|(id, p)| pb::ContainerStatus {
                container_id: id.clone(),
                main: Some(p.clone()),
                exec_ids: Vec::new(),
            })
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    async fn write_stdin(
        &self,
        _: Request<pb::WriteStdinRequest>,
    ) -> Reply<pb::WriteStdinResponse> {
        self.enter("WriteStdin").await?;
        Err(Status::unimplemented("WriteStdin"))
    }

    async fn close_stdin(
        &self,
        _: Request<pb::CloseStdinRequest>,
    ) -> Reply<pb::CloseStdinResponse> {
        self.enter("CloseStdin").await?;
        Ok(Response::new(pb::CloseStdinResponse {}))
    }

    async fn read_output(
        &self,
        r: Request<pb::ReadOutputRequest>,
    ) -> Reply<pb::ReadOutputResponse> {
        self.enter("ReadOutput").await?;
        if lock(&self.vm.guest).silent_reads {
            std::future::pending::<()>().await;
        }
        let r = r.into_inner();
        self.status(&r.container_id)?;
        let data = if r.stream == pb::Stream::Stdout as i32 && r.offset == 0 {
            lock(&self.vm.guest)
                .output
                .get(&r.container_id)
                .cloned()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::ReadOutputResponse {
            offset: r.offset,
            data,
            eof: true,
        }))
    }

    async fn resize_tty(&self, _: Request<pb::ResizeTtyRequest>) -> Reply<pb::ResizeTtyResponse> {
        self.enter("ResizeTty").await?;
        Ok(Response::new(pb::ResizeTtyResponse {}))
    }

    async fn stats(&self, _: Request<pb::StatsRequest>) -> Reply<pb::StatsResponse> {
        self.enter("Stats").await?;
        Ok(Response::new(pb::StatsResponse::default()))
    }

    async fn update_resources(
        &self,
        _: Request<pb::UpdateResourcesRequest>,
    ) -> Reply<pb::UpdateResourcesResponse> {
        self.enter("UpdateResources").await?;
        Ok(Response::new(pb::UpdateResourcesResponse {}))
    }

    async fn write_file(&self, _: Request<pb::WriteFileRequest>) -> Reply<pb::WriteFileResponse> {
        self.enter("WriteFile").await?;
        Ok(Response::new(pb::WriteFileResponse {}))
    }

    async fn sync_volume(
        &self,
        req: Request<pb::SyncVolumeRequest>,
    ) -> Reply<pb::SyncVolumeResponse> {
        self.enter("SyncVolume").await?;
        let r = req.into_inner();
        lock(&self.vm.guest).volumes.insert(r.name, r.entries);
        Ok(Response::new(pb::SyncVolumeResponse {}))
    }

    async fn prepare_volume(
        &self,
        req: Request<pb::PrepareVolumeRequest>,
    ) -> Reply<pb::PrepareVolumeResponse> {
        self.enter("PrepareVolume").await?;
        let name = req.into_inner().name;
        lock(&self.vm.guest).volumes.entry(name).or_default();
        Ok(Response::new(pb::PrepareVolumeResponse {}))
    }

    async fn read_volume(
        &self,
        req: Request<pb::ReadVolumeRequest>,
    ) -> Reply<pb::ReadVolumeResponse> {
        self.enter("ReadVolume").await?;
        let name = req.into_inner().name;
        let g = lock(&self.vm.guest);
        let data = g
            .volumes
            .get(&name)
            .and_then(|e| e.first())
            .map(|e| e.data.clone())
            .ok_or_else(|| Status::not_found(format!("volume {name:?} does not exist")))?;
        Ok(Response::new(pb::ReadVolumeResponse {
            data,
            truncated: false,
        }))
    }

    async fn remove_volume(
        &self,
        req: Request<pb::RemoveVolumeRequest>,
    ) -> Reply<pb::RemoveVolumeResponse> {
        self.enter("RemoveVolume").await?;
        let name = req.into_inner().name;
        lock(&self.vm.guest).volumes.remove(&name);
        Ok(Response::new(pb::RemoveVolumeResponse {}))
    }

    async fn shutdown(&self, _: Request<pb::ShutdownRequest>) -> Reply<pb::ShutdownResponse> {
        self.enter("Shutdown").await?;
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}
