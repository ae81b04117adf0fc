//! The seam between the runtime and VMM processes: what the runtime needs to start,
//! re-adopt and clean up pod VMs ([`Hypervisor`]) and to act on one it holds
//! ([`VmControl`], behind [`Vm`]). [`Processes`] is the real implementation (vmlet-vmm
//! processes, their control sockets and hybrid vsock); the runtime's unit tests use an
//! in-memory one (`sandbox::fake`), so that every cleanup and recovery path can be
//! exercised without booting a guest.

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::error::SandboxError;
use super::vm::Vm;
use super::vmm::{self, VmmCommand};

/// Starting, re-adopting and cleaning up pod VMs.
pub trait Hypervisor: Send + Sync + 'static {
    /// Starts a VM for `cmd` and waits (at most `timeout`) until its guest agent
    /// answers. On failure nothing of it runs any more.
    fn boot<'a>(
        &'a self,
        cmd: &'a VmmCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vm, SandboxError>>;

    /// Takes over the VM a previous daemon started (`pid`, serving `control`), and
    /// waits (at most `timeout`) until its guest agent answers on `vsock`. Its exit
    /// status, once it ends, comes from its exit record (`exit_record`).
    fn adopt<'a>(
        &'a self,
        pid: u32,
        control: &'a Path,
        vsock: &'a Path,
        exit_record: &'a Path,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vm, SandboxError>>;

    /// Kills the VMM serving `control` that no [`Vm`] handle holds (a start cut short,
    /// a leftover of a daemon that died), if there is one, and waits a little until it
    /// is gone.
    fn kill_stray<'a>(&'a self, control: &'a Path) -> BoxFuture<'a, ()>;
}

/// The real hypervisor: one vmlet-vmm process per VM.
#[derive(Debug, Default, Clone, Copy)]
pub struct Processes;

/// How long [`Processes::kill_stray`] waits for the VMM to go.
const STRAY_WAIT: Duration = Duration::from_secs(5);

impl Hypervisor for Processes {
    fn boot<'a>(
        &'a self,
        cmd: &'a VmmCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vm, SandboxError>> {
        Box::pin(Vm::boot(cmd, timeout))
    }

    fn adopt<'a>(
        &'a self,
        pid: u32,
        control: &'a Path,
        vsock: &'a Path,
        exit_record: &'a Path,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vm, SandboxError>> {
        Box::pin(Vm::adopt(pid, control, vsock, exit_record, timeout))
    }

    fn kill_stray<'a>(&'a self, control: &'a Path) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(pid) = vmm::find(control) else {
                return;
            };
            vmm::signal(pid, nix::sys::signal::Signal::SIGKILL);
            let start = std::time::Instant::now();
            while vmm::alive(pid, control) && start.elapsed() < STRAY_WAIT {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}
