//! Runs a built VM: installs the seccomp filters, serves the event loop (devices
//! and the control socket), and turns the way the VM ended into an exit status.

use crate::builder::{self, BuildError};
use crate::config::VmConfig;
use crate::control::{bind_unix, ControlServer, Lifecycle};
use crate::seccomp::{self, ThreadKind};
use crate::signals::TermSignals;
use crate::vstate::vcpu::{exit_code, ExitReason, VcpuControl};
use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmm_sys_util::epoll::EventSet;

/// Exit status when a graceful shutdown timed out and the VM was stopped.
pub const FORCED_STOP: i32 = 2;

/// Errors running the VMM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The VM could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// Termination signals could not be redirected to the event loop.
    #[error("setting up signal handling: {0}")]
    Signals(std::io::Error),
    /// Seccomp could not be set up.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// How a run of the VM ended; [`RunEnd::code`] is the VMM's exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunEnd {
    /// The VM ended by itself: the guest powered off, or a vCPU failed.
    #[error(transparent)]
    Vm(ExitReason),
    /// A graceful shutdown timed out and the VM was stopped.
    #[error("the guest did not power off within the shutdown timeout: stopped it")]
    ForcedStop,
    /// A termination signal stopped the VM.
    #[error("stopped by {}", signal_name(*.0))]
    Signal(i32),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(event_manager::Error),
}

impl RunEnd {
    /// The exit status: 0 the guest powered off, 1 a failure, [`FORCED_STOP`], or
    /// 128 + the signal.
    pub fn code(&self) -> i32 {
        match self {
            RunEnd::Vm(reason) => reason.code(),
            RunEnd::ForcedStop => FORCED_STOP,
            RunEnd::Signal(signal) => 128 + signal,
            RunEnd::EventLoop(_) => exit_code::ERROR,
        }
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".to_owned(),
        libc::SIGINT => "SIGINT".to_owned(),
        other => format!("signal {other}"),
    }
}

/// Builds the VM, runs it until it ends, and says how it ended.
pub fn run(config: &VmConfig) -> Result<RunEnd, RunError> {
    // Bind the control socket first: a busy path must fail before a VM exists.
    let listener = match &config.control_socket {
        Some(path) => Some((bind_unix(path)?, path.clone())),
        None => None,
    };
    let filters = if config.seccomp {
        seccomp::install_violation_handler()?;
        Some((
            seccomp::filter(ThreadKind::Vmm, std::process::id())?,
            Arc::new(seccomp::filter(ThreadKind::Vcpu, std::process::id())?),
        ))
    } else {
        None
    };
    // Block the termination signals before any thread exists, so all inherit it.
    let exited = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    let term = TermSignals::new(exited.clone(), signal.clone()).map_err(RunError::Signals)?;
    let vcpu_filter = filters.as_ref().map(|f| f.1.clone());
    let mut vmm = builder::build(config, move || match &vcpu_filter {
        Some(f) => seccomp::apply(ThreadKind::Vcpu, f),
        None => Ok(()),
    })?;

    let lifecycle = Arc::new(Lifecycle::default());
    if let Some((listener, path)) = listener {
        let server = ControlServer::new(listener, path, vmm.parts.clone(), lifecycle.clone());
        vmm.event_manager
            .add_subscriber(Arc::new(Mutex::new(server)));
    }
    let control = vmm.parts.control.clone();
    let exit = ExitWatch {
        control: control.clone(),
        exited: exited.clone(),
    };
    vmm.event_manager.add_subscriber(Arc::new(Mutex::new(exit)));
    vmm.event_manager.add_subscriber(Arc::new(Mutex::new(term)));

    if let Some((vmm_filter, _)) = &filters {
        seccomp::apply(ThreadKind::Vmm, vmm_filter)?;
    }
    let mut end = None;
    while !exited.load(Ordering::SeqCst) {
        if let Err(e) = vmm.event_manager.run_with_timeout(100) {
            end = Some(RunEnd::EventLoop(e));
            break;
        }
        if let Some(log) = &vmm.console_log {
            log.sync_due();
        }
        let deadline = *lifecycle
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            end = Some(RunEnd::ForcedStop);
            break;
        }
    }
    vmm.parts.vcpus.stop();
    let signal = signal.load(Ordering::SeqCst);
    if signal != 0 {
        return Ok(RunEnd::Signal(signal));
    }
    Ok(end.unwrap_or_else(|| RunEnd::Vm(control.exit_reason())))
}

/// Ends the event loop when a vCPU or device asks the VM to stop.
struct ExitWatch {
    control: Arc<VcpuControl>,
    exited: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.control.exit_evt.read();
        self.exited.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.control.exit_evt, EventSet::IN)) {
            tracing::error!("watching vCPU exits: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vcpu::{Registers, RegsReport, VcpuFault};

    #[test]
    fn exit_statuses_and_reasons() {
        assert_eq!(RunEnd::Vm(ExitReason::GuestShutdown).code(), 0);
        let crash = RunEnd::Vm(ExitReason::VcpuFault {
            vcpu: 1,
            fault: VcpuFault::Crash { exit: "SHUTDOWN" },
            regs: RegsReport::Read(Registers {
                rip: 0xffff_ffff_8100_0000,
                ..Registers::default()
            }),
        });
        assert_eq!(crash.code(), 1);
        let text = crash.to_string();
        assert!(
            text.starts_with("vCPU 1: guest crash: KVM exit SHUTDOWN without a reset request"),
            "{text}"
        );
        assert!(text.contains("rip=0xffffffff81000000"), "{text}");
        assert_eq!(RunEnd::ForcedStop.code(), FORCED_STOP);
        assert_eq!(RunEnd::Signal(libc::SIGTERM).code(), 143);
        assert_eq!(
            RunEnd::Signal(libc::SIGTERM).to_string(),
            "stopped by SIGTERM"
        );
    }
}
