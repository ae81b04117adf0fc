//! SIGTERM and SIGINT end the VM cleanly: vCPUs stop, sockets are removed, and
//! the VMM exits with 128 + the signal number. The signals are blocked in every
//! thread (the mask is set before any thread starts) and read from a signalfd on
//! the event loop, so no handler runs at an arbitrary point.

use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use vmm_sys_util::epoll::EventSet;

const SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];
/// Size of `struct signalfd_siginfo`; `ssi_signo` is its first field (u32).
const SIGINFO_LEN: usize = 128;

/// Watches for termination signals.
pub struct TermSignals {
    fd: OwnedFd,
    exited: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl TermSignals {
    /// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread it
    /// starts later) and opens a signalfd for them. `exited` is set and `signal`
    /// records the signal when one arrives.
    pub fn new(exited: Arc<AtomicBool>, signal: Arc<AtomicI32>) -> std::io::Result<Self> {
        // SAFETY: `set` is a plain sigset_t initialised by sigemptyset before use.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TermSignals {
            // SAFETY: `fd` is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            exited,
            signal,
        })
    }
}

impl MutEventSubscriber for TermSignals {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; SIGINFO_LEN];
        // SAFETY: reading into a buffer of exactly one signalfd_siginfo.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), SIGINFO_LEN) };
        if n != SIGINFO_LEN as isize {
            return;
        }
        let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
        tracing::info!("signal {signo}: stopping the VM");
        self.signal.store(signo, Ordering::SeqCst);
        self.exited.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            tracing::error!("watching termination signals: {e}");
        }
    }
}
