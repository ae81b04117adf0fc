//! vCPU threads: one per vCPU, each looping on `KVM_RUN` and dispatching port
//! I/O and MMIO exits to the buses. Pause, resume and stop are requested through
//! [`VcpuControl`]; a real-time signal kicks a thread out of `KVM_RUN`, and
//! `immediate_exit` closes the race where the signal lands just before it.

use super::vcpu_state::{VcpuState, VcpuStateError};
use crate::arch::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::devices::virtio::RateLimit;
use crate::seccomp::SeccompError;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// A vCPU's state could not be read or written.
    #[error("vCPU {0}: {1}")]
    State(u8, super::vcpu_state::VcpuStateError),
    /// The state of a vCPU that is not paused (or no longer runs) was asked for.
    #[error("the vCPUs must all be paused to save their state ({0})")]
    NotPaused(String),
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

/// Exit statuses of the VMM for the ways a VM ends.
pub mod exit_code {
    /// The guest reset or powered off.
    pub const GUEST_SHUTDOWN: i32 = 0;
    /// KVM or device failure.
    pub const ERROR: i32 = 1;
}

/// The registers that locate a vCPU failure in the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// CR0 (protection, paging).
    pub cr0: u64,
    /// CR2 (the last page-fault address).
    pub cr2: u64,
    /// CR3 (page table root).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER (long mode).
    pub efer: u64,
}

impl Registers {
    /// Reads the registers of a vCPU that has left `KVM_RUN`.
    pub fn read(fd: &VcpuFd) -> Result<Self, kvm_ioctls::Error> {
        let regs = fd.get_regs()?;
        let sregs = fd.get_sregs()?;
        Ok(Registers {
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        })
    }
}

impl std::fmt::Display for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.rip, self.rsp, self.rflags, self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )
    }
}

/// A vCPU's registers at a failure, or why they could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegsReport {
    /// Read.
    Read(Registers),
    /// KVM refused to give them.
    Unavailable(String),
}

impl std::fmt::Display for RegsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegsReport::Read(r) => write!(f, "registers: {r}"),
            RegsReport::Unavailable(e) => write!(f, "registers unavailable: {e}"),
        }
    }
}

/// What made a vCPU stop running the guest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VcpuFault {
    /// The guest crashed: a triple fault (or a halt) without a reset request.
    #[error("guest crash: KVM exit {exit} without a reset request (triple fault)")]
    Crash {
        /// The KVM exit, `SHUTDOWN` or `HLT`.
        exit: &'static str,
    },
    /// The hardware refused to enter the guest.
    #[error("KVM exit FAIL_ENTRY: hardware entry failure reason {reason:#x} on host cpu {cpu}")]
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// The host CPU.
        cpu: u32,
    },
    /// KVM could not handle an exit itself.
    #[error("KVM exit INTERNAL_ERROR: suberror {suberror} ({}), data {data:x?}", suberror_name(*.suberror))]
    InternalError {
        /// `KVM_INTERNAL_ERROR_*`.
        suberror: u32,
        /// The extra data KVM gave.
        data: Vec<u64>,
    },
    /// `KVM_RUN` itself failed.
    #[error("KVM_RUN failed: {0}")]
    Run(String),
}

/// The name of a `KVM_INTERNAL_ERROR_*` suberror.
pub fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected VM exit reason",
        _ => "unknown",
    }
}

/// Why the VM ended, as reported by a vCPU or a device.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ExitReason {
    /// The guest reset or powered off.
    #[error("the guest powered off or reset")]
    GuestShutdown,
    /// A vCPU could not go on running the guest.
    #[error("vCPU {vcpu}: {fault}; {regs}")]
    VcpuFault {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        fault: VcpuFault,
        /// Where the guest was.
        regs: RegsReport,
    },
    /// A vCPU thread could not be prepared (its seccomp filter).
    #[error("vCPU {vcpu}: setting up its thread: {source}")]
    VcpuSetup {
        /// The vCPU.
        vcpu: u8,
        /// Why (shared: the exit reason is cloned to whoever asks).
        source: Arc<SeccompError>,
    },
}

impl ExitReason {
    /// The VMM's exit status for this reason.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::GuestShutdown => exit_code::GUEST_SHUTDOWN,
            ExitReason::VcpuFault { .. } | ExitReason::VcpuSetup { .. } => exit_code::ERROR,
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: RunState,
    parked: usize,
    /// Bumped to ask every parked vCPU for its state ([`Vcpus::save_state`]).
    save_round: u64,
    /// The answers of this round, by vCPU index.
    saved: Vec<(u8, Result<VcpuState, VcpuStateError>)>,
}

/// Shared control block for all vCPU threads.
#[derive(Debug)]
pub struct VcpuControl {
    shared: Mutex<Shared>,
    changed: Condvar,
    /// Signalled (by any vCPU) when the VM should end; `exit_reason` says why.
    pub exit_evt: EventFd,
    /// The first failure reported, if any.
    failure: Mutex<Option<ExitReason>>,
    /// Set when the guest asked for a reset (i8042); a triple fault after that is
    /// the expected end of a reboot, before it a crash.
    pub reset_requested: AtomicBool,
    /// Exits to the VMM, by kind.
    pub exits: crate::counters::Exits,
}

impl VcpuControl {
    /// A control block in the running state.
    pub fn new() -> std::io::Result<Self> {
        Ok(VcpuControl {
            shared: Mutex::new(Shared {
                state: RunState::Running,
                parked: 0,
                save_round: 0,
                saved: Vec::new(),
            }),
            changed: Condvar::new(),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            failure: Mutex::new(None),
            reset_requested: AtomicBool::new(false),
            exits: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current requested state.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// Asks the VMM to end the VM for `reason`. The first failure is kept: it is
    /// the cause, and what follows it is usually a consequence.
    pub fn request_exit(&self, reason: ExitReason) {
        if !matches!(reason, ExitReason::GuestShutdown) {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if failure.is_none() {
                *failure = Some(reason);
            }
        }
        if let Err(e) = self.exit_evt.write(1) {
            tracing::error!("signalling VM exit: {e}");
        }
    }

    /// Why the VM ends: the first failure reported, else a guest shutdown.
    pub fn exit_reason(&self) -> ExitReason {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(ExitReason::GuestShutdown)
    }

    /// The exit status for [`Self::exit_reason`].
    pub fn exit_code(&self) -> i32 {
        self.exit_reason().code()
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
    /// The MSRs a snapshot saves.
    msr_indices: Arc<Vec<u32>>,
    /// The last [`Shared::save_round`] this vCPU answered.
    save_round: u64,
}

/// What every vCPU of a VM shares: its buses, control block and the MSRs a
/// snapshot saves.
#[derive(Clone)]
pub struct VcpuWiring {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Run state and exits.
    pub control: Arc<VcpuControl>,
    /// [`super::vcpu_state::msr_index_list`].
    pub msr_indices: Arc<Vec<u32>>,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` and sets its boot state.
    pub fn new(
        vm: &VmFd,
        kvm: &kvm_ioctls::Kvm,
        index: u8,
        count: u8,
        entry: u64,
        wiring: VcpuWiring,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Kvm(index, "KVM_CREATE_VCPU", e))?;
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VcpuError::Kvm(index, "KVM_GET_SUPPORTED_CPUID", e))?;
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        cpuid::normalize(&mut cpuid, index, count, tsc_deadline);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Kvm(index, "KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_regs(&fd, entry).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_sregs(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_fpu(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_lint(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        Ok(Self::wired(index, fd, wiring))
    }

    /// Creates vCPU `index` in the state a snapshot saved.
    pub fn restore(
        vm: &VmFd,
        index: u8,
        state: &VcpuState,
        wiring: VcpuWiring,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Kvm(index, "KVM_CREATE_VCPU", e))?;
        state.restore(&fd).map_err(|e| VcpuError::State(index, e))?;
        Ok(Self::wired(index, fd, wiring))
    }

    fn wired(index: u8, fd: VcpuFd, w: VcpuWiring) -> Self {
        Vcpu {
            index,
            fd,
            pio: w.pio,
            mmio: w.mmio,
            control: w.control,
            msr_indices: w.msr_indices,
            save_round: 0,
        }
    }

    /// Starts the vCPU thread. `before_run` runs on the thread first (the VMM
    /// installs the vCPU seccomp filter there).
    pub fn start(
        self,
        before_run: impl FnOnce() -> Result<(), SeccompError> + Send + 'static,
    ) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Err(e) = before_run() {
                    self.control.request_exit(ExitReason::VcpuSetup {
                        vcpu: index,
                        source: Arc::new(e),
                    });
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
        let control = self.control.clone();
        let exits = &control.exits;
        loop {
            if !self.wait_until_runnable() {
                break;
            }
            let fault = match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        exits.io_in.inc();
                        if !self.pio.read(u64::from(port), data) {
                            data.fill(0xff);
                        }
                        None
                    }
                    VcpuExit::IoOut(port, data) => {
                        exits.io_out.inc();
                        self.pio.write(u64::from(port), data);
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        exits.mmio_read.inc();
                        if !self.mmio.read(addr, data) {
                            data.fill(0);
                        }
                        None
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        exits.mmio_write.inc();
                        self.mmio.write(addr, data);
                        None
                    }
                    VcpuExit::Shutdown | VcpuExit::Hlt
                        if self.control.reset_requested.load(Ordering::SeqCst) =>
                    {
                        tracing::info!("vCPU {}: guest reset", self.index);
                        self.control.request_exit(ExitReason::GuestShutdown);
                        break;
                    }
                    VcpuExit::Shutdown => Some(VcpuFault::Crash { exit: "SHUTDOWN" }),
                    VcpuExit::Hlt => Some(VcpuFault::Crash { exit: "HLT" }),
                    VcpuExit::SystemEvent(kind, _) => {
                        tracing::info!("vCPU {}: system event {kind}", self.index);
                        self.control.request_exit(ExitReason::GuestShutdown);
                        break;
                    }
                    VcpuExit::FailEntry(reason, cpu) => Some(VcpuFault::FailEntry { reason, cpu }),
                    VcpuExit::InternalError => Some(self.internal_error()),
                    other => {
                        exits.other.inc();
                        // The guest decides how often this happens.
                        static UNEXPECTED: RateLimit = RateLimit::new();
                        if let Some(left_out) = UNEXPECTED.check() {
                            let exit = format!("{other:?}");
                            tracing::warn!(
                                "vCPU {}: unexpected KVM exit {exit}; {} ({left_out} more \
                                 like it not logged)",
                                self.index,
                                self.regs()
                            );
                        }
                        None
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    exits.interrupted.inc();
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => Some(VcpuFault::Run(e.to_string())),
            };
            if let Some(fault) = fault {
                self.control.request_exit(ExitReason::VcpuFault {
                    vcpu: self.index,
                    fault,
                    regs: self.regs(),
                });
                break;
            }
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }

    /// This vCPU's registers, for a report.
    fn regs(&self) -> RegsReport {
        match Registers::read(&self.fd) {
            Ok(r) => RegsReport::Read(r),
            Err(e) => RegsReport::Unavailable(e.to_string()),
        }
    }

    /// What KVM said about the internal error it just returned.
    fn internal_error(&mut self) -> VcpuFault {
        // SAFETY: KVM filled the `internal` member of the exit union: the last
        // exit was KVM_EXIT_INTERNAL_ERROR, and nothing has run since.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        VcpuFault::InternalError {
            suberror: internal.suberror,
            data: internal.data[..n].to_vec(),
        }
    }

    /// Parks while paused, answering state requests meanwhile; returns false when
    /// the thread should end.
    fn wait_until_runnable(&mut self) -> bool {
        let control = self.control.clone();
        let mut shared = control.lock();
        loop {
            match shared.state {
                RunState::Running => return true,
                RunState::Stopped => return false,
                RunState::Paused => {
                    shared.parked += 1;
                    self.control.changed.notify_all();
                    while shared.state == RunState::Paused {
                        if shared.save_round != self.save_round {
                            self.save_round = shared.save_round;
                            let state = VcpuState::save(&self.fd, &self.msr_indices);
                            shared.saved.push((self.index, state));
                            self.control.changed.notify_all();
                        }
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
    /// How many were started.
    count: usize,
}

impl Vcpus {
    /// Wraps started vCPUs.
    pub fn new(handles: Vec<VcpuHandle>, control: Arc<VcpuControl>) -> Self {
        Vcpus {
            count: handles.len(),
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

    /// How many vCPU threads still run (a failed one has ended).
    fn live(&self) -> usize {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|h| !h.thread.is_finished())
            .count()
    }

    /// Stops the guest CPUs and waits until all are parked.
    pub fn pause(&self, timeout: Duration) -> Result<(), VcpuError> {
        self.set_state(RunState::Paused);
        let live = self.live();
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

    /// The state of every vCPU, in index order; they must all be paused.
    pub fn save_state(&self, timeout: Duration) -> Result<Vec<VcpuState>, VcpuError> {
        let live = self.live();
        let mut shared = self.control.lock();
        if shared.state != RunState::Paused || shared.parked < live {
            return Err(VcpuError::NotPaused(format!(
                "{} of {live} parked",
                shared.parked
            )));
        }
        shared.save_round += 1;
        shared.saved.clear();
        self.control.changed.notify_all();
        let (mut shared, result) = self
            .control
            .changed
            .wait_timeout_while(shared, timeout, |s| s.saved.len() < live)
            .unwrap_or_else(|e| e.into_inner());
        if result.timed_out() {
            return Err(VcpuError::Timeout("save their state", timeout));
        }
        let mut saved = std::mem::take(&mut shared.saved);
        drop(shared);
        if saved.len() != self.count {
            return Err(VcpuError::NotPaused(format!(
                "{} of {} vCPU threads still run",
                saved.len(),
                self.count
            )));
        }
        saved.sort_by_key(|(index, _)| *index);
        saved
            .into_iter()
            .map(|(index, state)| state.map_err(|e| VcpuError::State(index, e)))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_the_exit_reason() {
        let control = VcpuControl::new().unwrap();
        assert!(matches!(control.exit_reason(), ExitReason::GuestShutdown));
        control.request_exit(ExitReason::GuestShutdown);
        assert_eq!(control.exit_code(), exit_code::GUEST_SHUTDOWN);
        let first = ExitReason::VcpuFault {
            vcpu: 0,
            fault: VcpuFault::FailEntry {
                reason: 0x21,
                cpu: 3,
            },
            regs: RegsReport::Unavailable("EBADF".into()),
        };
        control.request_exit(first.clone());
        let later = ExitReason::VcpuSetup {
            vcpu: 1,
            source: Arc::new(SeccompError::Handler(vmm_sys_util::errno::Error::new(
                libc::EPERM,
            ))),
        };
        control.request_exit(later.clone());
        control.request_exit(ExitReason::GuestShutdown);
        assert_eq!(control.exit_reason().to_string(), first.to_string());
        assert_eq!(control.exit_code(), exit_code::ERROR);
        assert_eq!(
            first.to_string(),
            "vCPU 0: KVM exit FAIL_ENTRY: hardware entry failure reason 0x21 on host cpu 3; \
             registers unavailable: EBADF"
        );
        // A thread that could not be set up says why, and keeps the error as its source.
        assert!(
            later
                .to_string()
                .starts_with("vCPU 1: setting up its thread: installing SIGSYS handler: "),
            "{later}"
        );
        let source = std::error::Error::source(&later).map(|s| s.to_string());
        assert_eq!(
            source,
            Some(later.to_string()["vCPU 1: setting up its thread: ".len()..].to_owned())
        );
    }

    #[test]
    fn internal_errors_name_their_suberror() {
        let fault = VcpuFault::InternalError {
            suberror: kvm_bindings::KVM_INTERNAL_ERROR_EMULATION,
            data: vec![0x10, 0xff],
        };
        assert_eq!(
            fault.to_string(),
            "KVM exit INTERNAL_ERROR: suberror 1 (instruction emulation failed), data [10, ff]"
        );
        assert_eq!(suberror_name(99), "unknown");
    }
}
