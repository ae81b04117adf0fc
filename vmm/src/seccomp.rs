//! Seccomp filters, one per thread kind, kept as data and compiled with
//! seccompiler when the VMM starts. Once the VM is built the VMM thread may only
//! serve its event loop and the vCPU threads may only run the guest; anything
//! else traps, logs the syscall number, and ends the process.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Exit status after a seccomp violation (128 + SIGSYS).
pub const VIOLATION_EXIT: i32 = 159;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules could not be compiled.
    #[error("building seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    /// The SIGSYS reporter could not be installed.
    #[error("installing SIGSYS handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
}

/// Syscalls of the VMM thread: its event loop (epoll, eventfds, device files,
/// unix sockets for vsock and the control socket), drive swaps (open, fstat),
/// vCPU kicks (tgkill), and what Rust's runtime needs (memory, futex, threads).
const VMM_SYSCALLS: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_close,
    libc::SYS_connect,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_lseek,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_robust_list,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_socket,
    libc::SYS_statx,
    libc::SYS_tgkill,
    libc::SYS_timerfd_settime,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_write,
    libc::SYS_writev,
];

/// Syscalls of a vCPU thread: `KVM_RUN` (and nothing else through ioctl),
/// eventfd and console writes from device exits, what a virtio device does when
/// the driver activates or resets it from a register write (touch its backend
/// sockets, close connections), and the runtime basics.
const VCPU_SYSCALLS: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fsync,
    libc::SYS_futex,
    libc::SYS_getrandom,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_read,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
];

/// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// Which thread a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop and control socket.
    Vmm,
    /// A vCPU thread.
    Vcpu,
}

fn allow_all(calls: &[i64]) -> BTreeMap<i64, Vec<SeccompRule>> {
    calls.iter().map(|c| (*c, Vec::new())).collect()
}

/// Compiles the filter for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules = match kind {
        ThreadKind::Vmm => allow_all(VMM_SYSCALLS),
        ThreadKind::Vcpu => allow_all(VCPU_SYSCALLS),
    };
    let ioctl_is = |req: u64| -> Result<SeccompRule, SeccompError> {
        let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)?;
        Ok(SeccompRule::new(vec![cond])?)
    };
    let ioctls = match kind {
        // std's `set_nonblocking` on accepted sockets uses FIONBIO.
        ThreadKind::Vmm => vec![ioctl_is(libc::FIONBIO)?, ioctl_is(libc::FIOCLEX)?],
        ThreadKind::Vcpu => vec![ioctl_is(KVM_RUN)?],
    };
    rules.insert(libc::SYS_ioctl, ioctls);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

thread_local! {
    /// The kind of filter this thread runs under, for the violation report:
    /// b'm' (VMM), b'c' (vCPU), 0 before any filter.
    static KIND: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

extern "C" fn report_violation(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // For SIGSYS the kernel stores the syscall number at byte 24 of siginfo
    // (`si_syscall` in the `_sigsys` union member); libc does not expose it.
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: `info` is the kernel-provided siginfo for this SIGSYS, which is
        // at least 128 bytes long.
        unsafe { std::ptr::read_unaligned((info as *const u8).add(24) as *const i32) }
    };
    let mut msg = *b"vmlet-vmm: seccomp: forbidden syscall 000000 on a ? thread\n";
    msg[50] = match KIND.with(|k| k.get()) {
        b'm' => b'M',
        b'c' => b'C',
        _ => b'?',
    };
    let mut n = nr.unsigned_abs();
    for i in (38..44).rev() {
        msg[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is valid.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(VIOLATION_EXIT);
    }
}

/// Installs the SIGSYS reporter (once per process, before any filter).
pub fn install_violation_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, report_violation)
        .map_err(SeccompError::Handler)
}

/// Installs `filter` (built for `kind`) on the calling thread; threads it spawns
/// inherit it.
pub fn apply(kind: ThreadKind, filter: &BpfProgram) -> Result<(), SeccompError> {
    KIND.with(|k| {
        k.set(match kind {
            ThreadKind::Vmm => b'm',
            ThreadKind::Vcpu => b'c',
        })
    });
    seccompiler::apply_filter(filter)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_child(f: impl FnOnce() -> i32) -> libc::c_int {
        // SAFETY: the child only runs async-signal-safe code (prctl, seccomp, raw
        // syscalls, _exit); the filter was compiled before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = f();
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn forbidden_syscall_ends_the_process() {
        install_violation_handler().unwrap();
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            let prog = filter(kind).unwrap();
            let code = in_child(|| {
                if apply(kind, &prog).is_err() {
                    return 1;
                }
                // Allowed: getpid-free path, a plain write to stderr of nothing.
                // SAFETY: zero-length write.
                unsafe { libc::write(2, std::ptr::null(), 0) };
                // Forbidden for both kinds: executing a program.
                // SAFETY: raw syscall with null arguments; the filter stops it first.
                unsafe { libc::syscall(libc::SYS_execve, 0, 0, 0) };
                0
            });
            assert_eq!(code, VIOLATION_EXIT, "{kind:?}");
        }
    }

    #[test]
    fn vcpu_filter_only_allows_kvm_run_ioctl() {
        install_violation_handler().unwrap();
        let prog = filter(ThreadKind::Vcpu).unwrap();
        let code = in_child(|| {
            if apply(ThreadKind::Vcpu, &prog).is_err() {
                return 1;
            }
            // KVM_RUN on a bad fd is allowed through the filter and fails with EBADF.
            // SAFETY: ioctl on an invalid fd has no effect.
            let r = unsafe { libc::ioctl(-1, KVM_RUN as libc::c_ulong) };
            if r != -1 {
                return 2;
            }
            // Any other ioctl request traps.
            // SAFETY: as above.
            unsafe { libc::ioctl(-1, 0xae01 as libc::c_ulong) };
            0
        });
        assert_eq!(code, VIOLATION_EXIT);
    }

    #[test]
    fn allowed_calls_pass() {
        let prog = filter(ThreadKind::Vmm).unwrap();
        let code = in_child(|| {
            if apply(ThreadKind::Vmm, &prog).is_err() {
                return 1;
            }
            // SAFETY: getpid and a zero-length write are harmless.
            unsafe {
                libc::syscall(libc::SYS_getpid);
                libc::write(1, std::ptr::null(), 0);
            }
            7
        });
        assert_eq!(code, 7);
    }
}
