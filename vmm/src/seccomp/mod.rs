//! Seccomp filters, one per thread kind, kept as data and compiled with
//! seccompiler when the VMM starts. Once the VM is built the VMM thread may only
//! serve its event loop and the vCPU threads may only run the guest; anything
//! else traps, reports the syscall's number and name as the process's last line
//! on stderr, and ends the process with [`VIOLATION_EXIT`]. Syscalls that can
//! do harm in some forms are allowed in the forms used only (see `rules`).
//!
//! virtio-fs creates its memfd (shared guest RAM), eventfds and backend connection
//! while the VM is built, before any filter; afterwards it needs only `fallocate`
//! (hole punching, for free page reporting) on the VMM thread and
//! `sendmsg`/`recvmsg` (vhost-user requests) on vCPU threads.

mod names;
mod rules;

pub use rules::ThreadKind;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
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

/// Syscalls the VMM thread may make with any arguments: its event loop (epoll,
/// eventfds, device files, unix sockets for vsock, vhost-user and the control
/// socket), drive swaps (fstat), removing its own sockets at exit (unlink: the
/// jail leaves it nothing else to remove), io_uring submissions and waits on the
/// drives' rings (made and restricted before the filter: no `io_uring_setup`), and
/// what Rust's runtime needs (memory, futex). The power-off helper thread runs
/// under this filter too. Argument-checked syscalls are in `rules`.
const VMM_SYSCALLS: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_connect,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_io_uring_enter,
    libc::SYS_getrandom,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_lseek,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_poll,
    libc::SYS_ppoll,
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
    libc::SYS_statx,
    libc::SYS_timerfd_settime,
    libc::SYS_unlink,
    libc::SYS_write,
    libc::SYS_writev,
];

/// Syscalls a vCPU thread may make with any arguments (ioctl, mmap & co are in
/// `rules`): eventfd and console writes from device exits (the console log
/// writes at offsets: pwrite64), what a virtio device does when the driver
/// activates or resets it from a register write (touch its backend sockets,
/// close connections, wait for a drive's io_uring requests; virtio-fs sends its
/// vhost-user vring requests, with their eventfds, by sendmsg and reads the replies
/// by recvmsg), and the runtime basics.
const VCPU_SYSCALLS: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_close,
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
    libc::SYS_io_uring_enter,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_pwrite64,
    libc::SYS_read,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The compiled filters of one thread kind, installed together (the kernel runs
/// every filter of a thread and takes the strictest answer).
pub struct ThreadFilter {
    programs: Vec<BpfProgram>,
}

/// Compiles the filter for a thread of `kind` in process `pid` (its own
/// threads are the only ones it may signal).
pub fn filter(kind: ThreadKind, pid: u32) -> Result<ThreadFilter, SeccompError> {
    let calls = match kind {
        ThreadKind::Vmm => VMM_SYSCALLS,
        ThreadKind::Vcpu => VCPU_SYSCALLS,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.iter().map(|c| (*c, Vec::new())).collect();
    rules.extend(rules::argument_rules(kind, pid)?);
    let mut programs = Vec::new();
    if kind == ThreadKind::Vmm {
        // glibc creates threads with clone3 and falls back to clone on ENOSYS;
        // clone3's flags are out of a filter's reach. The main filter lets
        // clone3 through, this one answers ENOSYS (the stricter answer wins).
        rules.insert(libc::SYS_clone3, Vec::new());
        let enosys = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )?;
        programs.push(enosys.try_into()?);
    }
    let main = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    programs.push(main.try_into()?);
    Ok(ThreadFilter { programs })
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
pub fn apply(kind: ThreadKind, filter: &ThreadFilter) -> Result<(), SeccompError> {
    KIND.with(|k| {
        k.set(match kind {
            ThreadKind::Vmm => b'm',
            ThreadKind::Vcpu => b'c',
        })
    });
    for program in &filter.programs {
        seccompiler::apply_filter(program)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
