//! vCPU threads: one per vCPU, each looping on `KVM_RUN` and dispatching port
//! I/O and MMIO exits to the buses. Pause, resume and stop are requested through
//! [`VcpuControl`]; a real-time signal kicks a thread out of `KVM_RUN`, and
//! `immediate_exit` closes the race where the signal lands just before it.

use crate::arch::{cpuid, regs};
use crate::devices::bus::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Errors creating or running vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU ioctl failed.
    #[error("vCPU {0}: {1}: {2}")]
    Kvm(u8, &'static str, kvm_ioctls::Error),
    /// Register setup failed.
    #[error("vCPU {0}: {1}")]
    Regs(u8, regs::RegsError),
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("spawning vCPU thread {0}: {1}")]
    Spawn(u8, std::io::Error),
    /// vCPUs did not reach the requested state in time.
    #[error("vCPUs did not {0} within {1:?}")]
    Timeout(&'static str, Duration),
}

/// Requested run state of all vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Run the guest.
    Running,
    /// Park outside `KVM_RUN` until resumed.
    Paused,
    /// Leave the thread.
    Stopped,
}

/// Why the VM stopped, as reported by a vCPU or device.
pub mod exit_code {
    /// The guest reset or powered off.
    pub const GUEST_SHUTDOWN: i32 = 0;
    /// KVM or device failure.
    pub const ERROR: i32 = 1;
}

#[derive(Debug)]
struct Shared {
    state: RunState,
    parked: usize,
}

/// Shared control block for all vCPU threads.
#[derive(Debug)]
pub struct VcpuControl {
    shared: Mutex<Shared>,
    changed: Condvar,
    /// Signalled (by any vCPU) when the VM should end; `exit_code` says why.
    pub exit_evt: EventFd,
    exit_code: AtomicI32,
    /// Set when the guest asked for a reset (i8042); a triple fault after that is
    /// the expected end of a reboot, before it a crash.
    pub reset_requested: AtomicBool,
}

impl VcpuControl {
    /// A control block in the running state.
    pub fn new() -> std::io::Result<Self> {
        Ok(VcpuControl {
            shared: Mutex::new(Shared {
                state: RunState::Running,
                parked: 0,
            }),
            changed: Condvar::new(),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            exit_code: AtomicI32::new(exit_code::GUEST_SHUTDOWN),
            reset_requested: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current requested state.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// Asks the VMM to end the VM with `code` (first caller wins).
    pub fn request_exit(&self, code: i32) {
        if code != exit_code::GUEST_SHUTDOWN {
            self.exit_code.store(code, Ordering::SeqCst);
        }
        if let Err(e) = self.exit_evt.write(1) {
            tracing::error!("signalling VM exit: {e}");
        }
    }

    /// The exit code requested so far.
    pub fn exit_code(&self) -> i32 {
        self.exit_code.load(Ordering::SeqCst)
    }
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, set by the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer targets this thread's mmap'd `kvm_run`, which
            // outlives the thread's run loop (it is cleared before the VcpuFd drops).
            unsafe { std::ptr::write_volatile(p, 1) };
        }
    });
}

/// Installs the kick handler for `SIGRTMIN` (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(VcpuError::Signal)
}

/// One vCPU before it starts.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Bus,
    mmio: Bus,
    control: Arc<VcpuControl>,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` and sets its boot state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &VmFd,
        kvm: &kvm_ioctls::Kvm,
        index: u8,
        count: u8,
        entry: u64,
        pio: Bus,
        mmio: Bus,
        control: Arc<VcpuControl>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Kvm(index, "KVM_CREATE_VCPU", e))?;
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VcpuError::Kvm(index, "KVM_GET_SUPPORTED_CPUID", e))?;
        cpuid::normalize(&mut cpuid, index, count);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Kvm(index, "KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_regs(&fd, entry).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_sregs(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_fpu(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_lint(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        Ok(Vcpu {
            index,
            fd,
            pio,
            mmio,
            control,
        })
    }

    /// Starts the vCPU thread. `before_run` runs on the thread first (the VMM
    /// installs the vCPU seccomp filter there).
    pub fn start(
        self,
        before_run: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Err(e) = before_run() {
                    tracing::error!("vCPU {index} setup: {e}");
                    self.control.request_exit(exit_code::ERROR);
                    return;
                }
                self.run()
            })
            .map_err(|e| VcpuError::Spawn(index, e))?;
        Ok(VcpuHandle { thread })
    }

    fn run(mut self) {
        let run_ptr: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|p| p.set(run_ptr));
        loop {
            if !self.wait_until_runnable() {
                break;
            }
            match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        if !self.pio.read(u64::from(port), data) {
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::IoOut(port, data) => {
                        self.pio.write(u64::from(port), data);
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !self.mmio.read(addr, data) {
                            data.fill(0);
                        }
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        self.mmio.write(addr, data);
                    }
                    VcpuExit::Shutdown | VcpuExit::Hlt => {
                        if self.control.reset_requested.load(Ordering::SeqCst) {
                            tracing::info!("vCPU {}: guest reset", self.index);
                            self.control.request_exit(exit_code::GUEST_SHUTDOWN);
                        } else {
                            tracing::error!("vCPU {}: guest triple fault (crash)", self.index);
                            self.control.request_exit(exit_code::ERROR);
                        }
                        break;
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        tracing::info!("vCPU {}: system event {kind}", self.index);
                        self.control.request_exit(exit_code::GUEST_SHUTDOWN);
                        break;
                    }
                    VcpuExit::FailEntry(reason, cpu) => {
                        tracing::error!(
                            "vCPU {}: entry failed: reason {reason:#x} cpu {cpu}",
                            self.index
                        );
                        self.control.request_exit(exit_code::ERROR);
                        break;
                    }
                    VcpuExit::InternalError => {
                        tracing::error!("vCPU {}: KVM internal error", self.index);
                        self.control.request_exit(exit_code::ERROR);
                        break;
                    }
                    other => {
                        tracing::warn!("vCPU {}: unexpected exit {other:?}", self.index);
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    tracing::error!("vCPU {}: KVM_RUN: {e}", self.index);
                    self.control.request_exit(exit_code::ERROR);
                    break;
                }
            }
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }

    /// Parks while paused; returns false when the thread should end.
    fn wait_until_runnable(&self) -> bool {
        let mut shared = self.control.lock();
        loop {
            match shared.state {
                RunState::Running => return true,
                RunState::Stopped => return false,
                RunState::Paused => {
                    shared.parked += 1;
                    self.control.changed.notify_all();
                    while shared.state == RunState::Paused {
                        shared = self
                            .control
                            .changed
                            .wait(shared)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    shared.parked -= 1;
                    self.control.changed.notify_all();
                }
            }
        }
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    fn kick(&self) {
        if let Err(e) = self.thread.kill(SIGRTMIN()) {
            tracing::debug!("kicking vCPU thread: {e}");
        }
    }
}

/// All vCPU threads of the VM.
pub struct Vcpus {
    handles: Mutex<Vec<VcpuHandle>>,
    control: Arc<VcpuControl>,
}

impl Vcpus {
    /// Wraps started vCPUs.
    pub fn new(handles: Vec<VcpuHandle>, control: Arc<VcpuControl>) -> Self {
        Vcpus {
            handles: Mutex::new(handles),
            control,
        }
    }

    fn set_state(&self, state: RunState) {
        self.control.lock().state = state;
        self.control.changed.notify_all();
        for h in self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.kick();
        }
    }

    /// Stops the guest CPUs and waits until all are parked.
    pub fn pause(&self, timeout: Duration) -> Result<(), VcpuError> {
        self.set_state(RunState::Paused);
        let live = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|h| !h.thread.is_finished())
            .count();
        let shared = self.control.lock();
        let (_guard, result) = self
            .control
            .changed
            .wait_timeout_while(shared, timeout, |s| s.parked < live)
            .unwrap_or_else(|e| e.into_inner());
        if result.timed_out() {
            return Err(VcpuError::Timeout("pause", timeout));
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.set_state(RunState::Running);
    }

    /// Current requested state.
    pub fn state(&self) -> RunState {
        self.control.state()
    }

    /// Ends all vCPU threads and joins them.
    pub fn stop(&self) {
        self.set_state(RunState::Stopped);
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            // Kick until the thread leaves KVM_RUN (a kick can land between checks).
            while !h.thread.is_finished() {
                h.kick();
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = h.thread.join();
        }
    }
}
