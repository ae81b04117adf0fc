//! Runs a built VM: installs the seccomp filters, serves the event loop (devices
//! and the control socket), and turns the way the VM ended into an exit status.

use crate::builder::{self, BuildError};
use crate::config::VmConfig;
use crate::control::{bind_unix, ControlServer, Lifecycle};
use crate::seccomp::{self, ThreadKind};
use crate::signals::TermSignals;
use crate::vstate::vcpu::{exit_code, VcpuControl};
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

/// Builds the VM, runs it until it ends, and returns the exit status.
pub fn run(config: &VmConfig) -> Result<i32, RunError> {
    // Bind the control socket first: a busy path must fail before a VM exists.
    let listener = match &config.control_socket {
        Some(path) => Some((bind_unix(path)?, path.clone())),
        None => None,
    };
    let filters = if config.seccomp {
        seccomp::install_violation_handler()?;
        Some((
            seccomp::filter(ThreadKind::Vmm)?,
            Arc::new(seccomp::filter(ThreadKind::Vcpu)?),
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
        Some(f) => seccomp::apply(ThreadKind::Vcpu, f).map_err(|e| e.to_string()),
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
    let mut code = None;
    while !exited.load(Ordering::SeqCst) {
        if let Err(e) = vmm.event_manager.run_with_timeout(100) {
            tracing::error!("event loop: {e}");
            code = Some(exit_code::ERROR);
            break;
        }
        let deadline = *lifecycle
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!("the guest did not power off in time: stopping it");
            code = Some(FORCED_STOP);
            break;
        }
    }
    vmm.parts.vcpus.stop();
    let signal = signal.load(Ordering::SeqCst);
    if signal != 0 {
        return Ok(128 + signal);
    }
    Ok(code.unwrap_or_else(|| control.exit_code()))
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
