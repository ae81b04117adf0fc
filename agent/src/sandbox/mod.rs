//! A pod's VM: one vmlet-vmm process per pod, its disks, and the connection to its
//! guest agent. [`Vm::boot`] starts one, [`Vm::adopt`] takes over one that a previous
//! vmletd started; either way the VMM is not vmletd's child in any way that matters
//! (own process group, output to a file), so it outlives the daemon.
//!
//! Per pod (paths in [`crate::store::PodPaths`]): `scratch.ext4` (sparse ext4 for the
//! writable layers), `empty.img` (backs the image slots not in use), `console.log`
//! (serial console), `vmm.log`, and in the runtime directory the `vsock` and `ctl`
//! sockets. Images reach the guest by swapping a slot's backing file through the
//! control socket (virtio-mmio has no hotplug).

pub mod disk;
pub mod guest;
pub mod vmm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use vmlet_vmm_api::control::Request;

pub use guest::GuestClient;
pub use vmm::VmmCommand;

/// How often an adopted VMM (not our child) is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// Why a VM could not be started, reached or changed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// File or process error.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or program.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 {path} failed: {stderr}")]
    Mkfs {
        /// The disk.
        path: PathBuf,
        /// Its complaint.
        stderr: String,
    },
    /// The VMM exited (before the guest was ready, or while adopting it).
    #[error("the VMM exited (see the pod's vmm.log and console.log); last connection error: {0}")]
    VmmExited(String),
    /// The guest agent did not answer in time.
    #[error("the guest agent did not answer within {timeout:?}: {last}")]
    GuestTimeout {
        /// The limit.
        timeout: Duration,
        /// The last error.
        last: String,
    },
    /// A control-socket request failed.
    #[error("VMM control socket {socket}: {reason}")]
    Control {
        /// The socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The VMM refused a control request, or its reply could not be read.
    #[error("VMM control socket {socket}: {cmd} {source}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// The request.
        cmd: &'static str,
        /// What went wrong.
        source: vmlet_vmm_api::ProtocolError,
    },
    /// More vCPUs than the VMM takes.
    #[error("{0} vCPUs asked for, the VMM takes at most 255")]
    Vcpus(u32),
    /// The VMM's command line cannot express the configuration.
    #[error("the VMM's command line: {0}")]
    VmmArgs(vmlet_vmm_api::ArgsError),
}

/// A running pod VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The VMM's pid.
    pub pid: u32,
    /// The guest agent.
    pub client: GuestClient,
    control: PathBuf,
    exited: watch::Receiver<bool>,
}

impl Vm {
    /// Starts a VMM and waits for its guest agent. On failure the VMM is killed and
    /// reaped before this returns.
    pub async fn boot(cmd: &VmmCommand, timeout: Duration) -> Result<Vm, SandboxError> {
        let mut child = vmm::spawn(cmd)?;
        let Some(pid) = child.id() else {
            return Err(SandboxError::VmmExited("exited at once".into()));
        };
        let (tx, exited) = watch::channel(false);
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::info!(pid, "VMM exited: {status:?}");
            let _ = tx.send(true);
        });
        let rx = exited.clone();
        match guest::connect(&cmd.vsock, timeout, move || !*rx.borrow()).await {
            Ok(client) => Ok(Vm {
                pid,
                client,
                control: cmd.control.clone(),
                exited,
            }),
            Err(e) => {
                let vm = Vm {
                    pid,
                    client: GuestClient::new(
                        tonic::transport::Endpoint::from_static("http://unused").connect_lazy(),
                    ),
                    control: cmd.control.clone(),
                    exited,
                };
                vm.kill().await;
                Err(e)
            }
        }
    }

    /// Takes over a VMM a previous daemon started.
    pub async fn adopt(
        pid: u32,
        control: &Path,
        vsock: &Path,
        timeout: Duration,
    ) -> Result<Vm, SandboxError> {
        if !vmm::alive(pid, control) {
            return Err(SandboxError::VmmExited(format!("pid {pid} is gone")));
        }
        let (tx, exited) = watch::channel(false);
        let ctl = control.to_owned();
        tokio::spawn(async move {
            while vmm::alive(pid, &ctl) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            tracing::info!(pid, "adopted VMM exited");
            let _ = tx.send(true);
        });
        let rx = exited.clone();
        let client = guest::connect(vsock, timeout, move || !*rx.borrow()).await?;
        Ok(Vm {
            pid,
            client,
            control: control.to_owned(),
            exited,
        })
    }

    /// Becomes true when the VMM has exited.
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }

    /// Whether the VMM still runs.
    pub fn running(&self) -> bool {
        !*self.exited.borrow()
    }

    /// Makes drive `id` read from `path` (the guest sees the new size and content).
    pub async fn swap_drive(&self, id: &str, path: &Path) -> Result<(), SandboxError> {
        let request = Request::SwapDrive {
            id: id.to_owned(),
            path: path.to_owned(),
        };
        vmm::control(&self.control, &request).await.map(drop)
    }

    async fn wait_exit(&self, limit: Duration) -> bool {
        let mut rx = self.exited.clone();
        let done = tokio::time::timeout(limit, rx.wait_for(|e| *e))
            .await
            .is_ok();
        done
    }

    /// Powers the guest off (it has `grace` to do so), then kills the VMM if needed.
    /// Returns once the VMM is gone.
    pub async fn stop(&self, grace: Duration) {
        if !self.running() {
            return;
        }
        let request = Request::Shutdown {
            timeout_ms: Some(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)),
        };
        if let Err(e) = vmm::control(&self.control, &request).await {
            tracing::warn!(pid = self.pid, "graceful VM shutdown: {e}");
        }
        if self.wait_exit(grace + Duration::from_secs(5)).await {
            return;
        }
        self.kill().await;
    }

    /// Kills the VMM and waits until it is gone.
    pub async fn kill(&self) {
        vmm::signal(self.pid, Signal::SIGKILL);
        if !self.wait_exit(Duration::from_secs(10)).await {
            tracing::error!(pid = self.pid, "the VMM survived SIGKILL for 10 s");
        }
    }
}
