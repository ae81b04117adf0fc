//! Argument rules: the syscalls a thread may make only in some forms. Each rule
//! lists the forms allowed; any other form traps like a syscall off the list.
//!
//! - `socket`: unix stream sockets only (vsock connections to host services, the
//!   power-off request); no network, netlink or packet sockets.
//! - `clone`: new threads only, with exactly the flags glibc's `pthread_create`
//!   passes; `clone3` fails with ENOSYS (a filter cannot read its flags, which sit
//!   in memory) so glibc falls back to `clone`.
//! - `openat`: a drive swap by path (the client sent no file) opens one existing
//!   file read-only or read-write; no creating, truncating, `O_PATH` or
//!   directories.
//! - `mmap`, `mprotect`: never executable memory.
//! - `madvise`: dropping pages (balloon, allocator, thread stacks) only.
//! - `fcntl`: reading and setting status and descriptor flags only (no
//!   `F_SETOWN`/`F_SETSIG`, which aim signals at other processes, no locks or
//!   leases).
//! - `tgkill`: only this process's threads, only the vCPU kick (`SIGRTMIN`) and
//!   `SIGABRT` (an abort); `kill` is not allowed at all.
//! - `prctl`: naming a thread only.
//! - `ioctl`: the KVM run and state-read requests on vCPU threads (registers for
//!   a failure report, the whole state for a snapshot), the VM state reads of a
//!   snapshot and `FIONBIO` and `FIOCLEX` (std's socket setup) on the VMM thread;
//!   `TUNSETOFFLOAD` on both (a network card's activation, an MMIO write on a vCPU
//!   or a restore on the VMM thread, sets its tap's offloads to the guest's features).
//! - `openat` also creates a snapshot's files: new files only (`O_EXCL`), written.
//! - `ftruncate`: sizing a snapshot's memory file.
//! - `fallocate`: punching holes (free page reporting on shared guest RAM).
//! - `io_uring_register`: replacing a drive's file in its ring (a swap) only.

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// Which thread a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop and control socket.
    Vmm,
    /// A vCPU thread.
    Vcpu,
}

/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = crate::devices::virtio::net::TUNSETOFFLOAD;
/// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS` = `_IOR(KVMIO, 0x81, struct kvm_regs)`: read when a vCPU fails,
/// for the exit report.
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_SREGS` = `_IOR(KVMIO, 0x83, struct kvm_sregs)`, likewise.
pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

/// The vCPU state reads of a snapshot (`vstate::vcpu_state`).
pub const KVM_VCPU_STATE_READS: [u64; 9] = [
    ior(0x98, std::mem::size_of::<kvm_bindings::kvm_mp_state>()), // KVM_GET_MP_STATE
    ior(0xa4, std::mem::size_of::<kvm_bindings::kvm_xsave>()),    // KVM_GET_XSAVE
    ior(0xa6, std::mem::size_of::<kvm_bindings::kvm_xcrs>()),     // KVM_GET_XCRS
    ior(0xa1, std::mem::size_of::<kvm_bindings::kvm_debugregs>()), // KVM_GET_DEBUGREGS
    ior(0x8e, std::mem::size_of::<kvm_bindings::kvm_lapic_state>()), // KVM_GET_LAPIC
    iowr(0x88, std::mem::size_of::<kvm_bindings::kvm_msrs>()),    // KVM_GET_MSRS
    ior(0x9f, std::mem::size_of::<kvm_bindings::kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
    iowr(0x91, std::mem::size_of::<kvm_bindings::kvm_cpuid2>()),  // KVM_GET_CPUID2
    0xaea3,                                                       // KVM_GET_TSC_KHZ
];

/// The VM state reads of a snapshot (`vstate::vm`).
pub const KVM_VM_STATE_READS: [u64; 3] = [
    ior(0x9f, std::mem::size_of::<kvm_bindings::kvm_pit_state2>()), // KVM_GET_PIT2
    ior(0x7c, std::mem::size_of::<kvm_bindings::kvm_clock_data>()), // KVM_GET_CLOCK
    iowr(0x62, std::mem::size_of::<kvm_bindings::kvm_irqchip>()),   // KVM_GET_IRQCHIP
];

/// `IORING_REGISTER_FILES_UPDATE`: a drive swap replaces its ring's file.
pub const IORING_REGISTER_FILES_UPDATE: u64 =
    crate::devices::virtio::block::REGISTER_FILES_UPDATE as u64;

/// The `openat` flags that create a snapshot file (`OpenOptions::create_new`).
pub const SNAPSHOT_CREATE_FLAGS: u64 =
    (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC) as u64;

/// `_IOR(KVMIO, nr, size)`.
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// `_IOWR(KVMIO, nr, size)`.
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// The flags glibc's `pthread_create` gives `clone` (a thread sharing memory,
/// files, filesystem and signal handlers, with its own TLS).
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// `socket(2)` type bits, without `SOCK_NONBLOCK` and `SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u64 = 0xf;

/// The rules of one syscall: it passes if any rule holds.
pub type Rules = Vec<SeccompRule>;

/// `arg` (a 32-bit argument) equals `value`.
fn eq(arg: u8, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// `arg & mask == value` on a 32-bit argument.
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
}

/// One rule per value: `arg` equals one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Result<Rules, BackendError> {
    values
        .iter()
        .map(|v| SeccompRule::new(vec![eq(arg, *v)?]))
        .collect()
}

/// One rule of a single condition.
fn only(cond: SeccompCondition) -> Result<Rules, BackendError> {
    Ok(vec![SeccompRule::new(vec![cond])?])
}

/// The argument-checked syscalls of a thread of `kind` in process `pid`, with
/// their rules.
pub fn argument_rules(kind: ThreadKind, pid: u32) -> Result<Vec<(i64, Rules)>, BackendError> {
    let no_exec = || masked(2, libc::PROT_EXEC as u64, 0);
    let mut rules = vec![
        (libc::SYS_mmap, only(no_exec()?)?),
        (libc::SYS_mprotect, only(no_exec()?)?),
        (
            libc::SYS_madvise,
            one_of(2, &[libc::MADV_DONTNEED as u64, libc::MADV_FREE as u64])?,
        ),
        (
            libc::SYS_fcntl,
            one_of(
                1,
                &[
                    libc::F_GETFL as u64,
                    libc::F_SETFL as u64,
                    libc::F_GETFD as u64,
                    libc::F_SETFD as u64,
                ],
            )?,
        ),
    ];
    match kind {
        ThreadKind::Vcpu => {
            let mut ioctls = vec![KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, TUNSETOFFLOAD];
            ioctls.extend(KVM_VCPU_STATE_READS);
            rules.push((libc::SYS_ioctl, one_of(1, &ioctls)?));
        }
        ThreadKind::Vmm => {
            let own_thread = |sig: libc::c_int| -> Result<SeccompRule, BackendError> {
                SeccompRule::new(vec![eq(0, u64::from(pid))?, eq(2, sig as u64)?])
            };
            let thread_clone = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::Eq,
                THREAD_CLONE_FLAGS,
            )?;
            let unix_stream = SeccompRule::new(vec![
                eq(0, libc::AF_UNIX as u64)?,
                masked(1, SOCK_TYPE_MASK, libc::SOCK_STREAM as u64)?,
            ])?;
            let mut ioctls = vec![libc::FIONBIO, libc::FIOCLEX, TUNSETOFFLOAD];
            ioctls.extend(KVM_VM_STATE_READS);
            rules.extend([
                (libc::SYS_ioctl, one_of(1, &ioctls)?),
                (libc::SYS_socket, vec![unix_stream]),
                (libc::SYS_clone, only(thread_clone)?),
                (
                    libc::SYS_openat,
                    one_of(
                        2,
                        &[
                            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                            (libc::O_RDWR | libc::O_CLOEXEC) as u64,
                            SNAPSHOT_CREATE_FLAGS,
                        ],
                    )?,
                ),
                (
                    libc::SYS_tgkill,
                    vec![
                        own_thread(vmm_sys_util::signal::SIGRTMIN())?,
                        own_thread(libc::SIGABRT)?,
                    ],
                ),
                (libc::SYS_prctl, one_of(0, &[libc::PR_SET_NAME as u64])?),
                (
                    libc::SYS_fallocate,
                    one_of(1, &[crate::devices::virtio::balloon::PUNCH_HOLE as u64])?,
                ),
                (
                    libc::SYS_io_uring_register,
                    one_of(1, &[IORING_REGISTER_FILES_UPDATE])?,
                ),
            ]);
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers() {
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        // As the kernel's headers compute them (x86_64).
        assert_eq!(KVM_VCPU_STATE_READS[0], 0x8004_ae98, "KVM_GET_MP_STATE");
        assert_eq!(KVM_VCPU_STATE_READS[1], 0x9000_aea4, "KVM_GET_XSAVE");
        assert_eq!(KVM_VCPU_STATE_READS[4], 0x8400_ae8e, "KVM_GET_LAPIC");
        assert_eq!(KVM_VCPU_STATE_READS[5], 0xc008_ae88, "KVM_GET_MSRS");
        assert_eq!(KVM_VCPU_STATE_READS[7], 0xc008_ae91, "KVM_GET_CPUID2");
        assert_eq!(KVM_VM_STATE_READS[0], 0x8070_ae9f, "KVM_GET_PIT2");
        assert_eq!(KVM_VM_STATE_READS[2], 0xc208_ae62, "KVM_GET_IRQCHIP");
    }

    #[test]
    fn thread_flags_are_glibcs() {
        assert_eq!(THREAD_CLONE_FLAGS, 0x3d0f00);
    }
}
