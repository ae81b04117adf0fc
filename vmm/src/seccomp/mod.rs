//! Seccomp filters, one per thread kind, kept as data and compiled with
//! seccompiler when the VMM starts. Once the VM is built the VMM thread may only
//! serve its event loop and the vCPU threads may only run the guest; anything
//! else traps, reports the syscall's number and name as the process's last line
//! on stderr, and ends the process with [`VIOLATION_EXIT`].
//!
//! virtio-fs creates its memfd (shared guest RAM), eventfds and backend connection
//! while the VM is built, before any filter; afterwards it needs only `fallocate`
//! (hole punching, for free page reporting) on the VMM thread and
//! `sendmsg`/`recvmsg` (vhost-user requests) on vCPU threads.

mod names;

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
/// unix sockets for vsock, vhost-user and the control socket), drive swaps (open, fstat),
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
/// sockets, close connections; virtio-fs sends its vhost-user vring requests, with
/// their eventfds, by sendmsg and reads the replies by recvmsg), and the runtime
/// basics.
const VCPU_SYSCALLS: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
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
/// `KVM_GET_REGS` = `_IOR(KVMIO, 0x81, struct kvm_regs)`: read when a vCPU fails,
/// for the exit report.
const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_SREGS` = `_IOR(KVMIO, 0x83, struct kvm_sregs)`, likewise.
const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

/// `_IOR(KVMIO, nr, size)`.
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

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
        ThreadKind::Vcpu => vec![
            ioctl_is(KVM_RUN)?,
            ioctl_is(KVM_GET_REGS)?,
            ioctl_is(KVM_GET_SREGS)?,
        ],
    };
    rules.insert(libc::SYS_ioctl, ioctls);
    if kind == ThreadKind::Vmm {
        // Free page reporting on shared guest RAM punches holes in the memfd; no
        // other fallocate mode (none that could grow or shrink a file).
        let mode = SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            crate::devices::virtio::balloon::PUNCH_HOLE as u64,
        )?;
        rules.insert(libc::SYS_fallocate, vec![SeccompRule::new(vec![mode])?]);
    }
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

/// A line built without allocating (the SIGSYS handler may not allocate).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    fn push_num(&mut self, n: i64) -> &mut Self {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The report of forbidden syscall `nr` on a thread of `kind` (b'm', b'c' or 0):
/// `vmlet-vmm: error: seccomp: forbidden syscall 59 (execve) on a vCPU thread (exit status 159)`.
fn violation_line(nr: i64, kind: u8) -> Line {
    let thread: &[u8] = match kind {
        b'm' => b"the VMM thread",
        b'c' => b"a vCPU thread",
        _ => b"an unfiltered thread",
    };
    let mut line = Line::new();
    line.push(b"vmlet-vmm: error: seccomp: forbidden syscall ")
        .push_num(nr)
        .push(b" (")
        .push(names::name(nr).as_bytes())
        .push(b") on ")
        .push(thread)
        .push(b" (exit status ")
        .push_num(i64::from(VIOLATION_EXIT))
        .push(b")\n");
    line
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
    let line = violation_line(i64::from(nr), KIND.with(|k| k.get()));
    let msg = line.as_bytes();
    // SAFETY: write(2) is async-signal-safe; `msg` is valid for its length.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    // The same line, without its newline, as the exit record (one writev(2)).
    crate::exit_record::write(msg.strip_suffix(b"\n").unwrap_or(msg));
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(VIOLATION_EXIT) };
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
        in_child_with_stderr(f).0
    }

    /// Runs `f` in a forked child; returns its exit status and what it wrote to
    /// stderr.
    fn in_child_with_stderr(f: impl FnOnce() -> i32) -> (libc::c_int, String) {
        let mut pipe = [0; 2];
        // SAFETY: `pipe` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only runs async-signal-safe code (dup2, close, prctl,
        // seccomp, raw syscalls, _exit); the filter was compiled before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain descriptor calls on the pipe this process owns.
            unsafe {
                libc::dup2(pipe[1], 2);
                libc::close(pipe[0]);
                libc::close(pipe[1]);
            }
            let code = f();
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        // SAFETY: closing our copy of the write end, which we own.
        unsafe { libc::close(pipe[1]) };
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            // SAFETY: reading into `chunk`, which is valid for its length.
            let n = unsafe { libc::read(pipe[0], chunk.as_mut_ptr().cast(), chunk.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n as usize]);
        }
        // SAFETY: closing the read end, which we own.
        unsafe { libc::close(pipe[0]) };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        (
            libc::WEXITSTATUS(status),
            String::from_utf8_lossy(&out).into_owned(),
        )
    }

    #[test]
    fn forbidden_syscall_ends_the_process_with_its_name_as_last_line() {
        install_violation_handler().unwrap();
        for (kind, thread) in [
            (ThreadKind::Vmm, "the VMM thread"),
            (ThreadKind::Vcpu, "a vCPU thread"),
        ] {
            let prog = filter(kind).unwrap();
            let (code, stderr) = in_child_with_stderr(|| {
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
            assert_eq!(
                stderr.lines().last(),
                Some(
                    format!(
                        "vmlet-vmm: error: seccomp: forbidden syscall 59 (execve) on {thread} (exit status 159)"
                    )
                    .as_str()
                ),
                "{stderr:?}"
            );
        }
    }

    #[test]
    fn violation_line_without_allocation() {
        let line = violation_line(-1, 0);
        assert_eq!(
            std::str::from_utf8(line.as_bytes()).unwrap(),
            "vmlet-vmm: error: seccomp: forbidden syscall -1 (?) on an unfiltered thread (exit status 159)\n"
        );
        let line = violation_line(libc::SYS_openat, b'c');
        assert!(std::str::from_utf8(line.as_bytes())
            .unwrap()
            .contains("syscall 257 (openat) on a vCPU thread"));
    }

    #[test]
    fn kvm_ioctl_numbers() {
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn vcpu_filter_only_allows_kvm_run_and_register_reads() {
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
            // So are the register reads of the exit report.
            // SAFETY: as above.
            let r = unsafe { libc::ioctl(-1, KVM_GET_REGS as libc::c_ulong) };
            if r != -1 {
                return 3;
            }
            // Any other ioctl request traps.
            // SAFETY: as above.
            unsafe { libc::ioctl(-1, 0xae01 as libc::c_ulong) };
            0
        });
        assert_eq!(code, VIOLATION_EXIT);
    }

    #[test]
    fn vmm_thread_may_only_punch_holes() {
        install_violation_handler().unwrap();
        let prog = filter(ThreadKind::Vmm).unwrap();
        let code = in_child(|| {
            if apply(ThreadKind::Vmm, &prog).is_err() {
                return 1;
            }
            let mode = crate::devices::virtio::balloon::PUNCH_HOLE;
            // SAFETY: fallocate on a bad fd has no effect.
            if unsafe { libc::fallocate(-1, mode, 0, 4096) } != -1 {
                return 2;
            }
            // Growing a file traps.
            // SAFETY: as above.
            unsafe { libc::fallocate(-1, 0, 0, 4096) };
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
