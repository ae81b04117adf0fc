//! Zombie reaping that does not steal exit statuses.
//!
//! As PID 1, vmlet-init inherits every orphan of the guest and must reap them all, while
//! the container manager needs the exit statuses of the processes it started. vmlet-init
//! runs on one thread (a current-thread tokio runtime), which makes this simple:
//!
//! - whoever forks calls [`Reaper::register`] right after `fork`, before its next
//!   `.await`, so the reaping task cannot run in between and miss the pid;
//! - [`Reaper::run`] wakes on every `SIGCHLD`, reaps every exited child with
//!   `waitpid(-1, WNOHANG)`, and hands registered children's statuses to their
//!   receivers; orphans' statuses are dropped.
//!
//! Nobody else may call `wait*`: a pid is reaped in exactly one place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::console;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, or 128 + the signal number if a signal ended it.
    pub code: i32,
    /// The signal that ended it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    fn from_wait(status: WaitStatus) -> Option<(Pid, Self)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, ExitStatus { code, signal: None })),
            WaitStatus::Signaled(pid, sig, _) => Some((
                pid,
                ExitStatus {
                    code: 128 + sig as i32,
                    signal: Some(sig as i32),
                },
            )),
            _ => None,
        }
    }
}

/// The table of children whose exit status someone wants; see the module docs.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<Pid, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    /// An empty table. One per process: the reaper reaps every child.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Asks for `pid`'s exit status. Must be called after `fork`/`spawn` before the
    /// caller next yields to the runtime.
    pub fn register(&self, pid: Pid) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, tx);
        rx
    }

    /// Reaps children forever.
    pub async fn run(self: Arc<Self>) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                console::error(format_args!(
                    "cannot watch SIGCHLD ({e}): polling for exited children"
                ));
                None
            }
        };
        loop {
            self.reap_exited();
            match sigchld.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap_exited(&self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let Some((pid, exit)) = ExitStatus::from_wait(status) else {
                        continue;
                    };
                    let waiter = self
                        .waiters
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&pid);
                    if let Some(tx) = waiter {
                        // The receiver may be gone (nobody waits any more): fine.
                        let _ = tx.send(exit);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    console::error(format_args!("waitpid: {e}"));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    // The reaper, not the Child handles, waits for these processes. The lock is held
    // across awaits on purpose: it keeps other tests from starting children while this
    // one reaps them all (a single-threaded runtime: nothing else needs it meanwhile).
    #[allow(clippy::zombie_processes, clippy::await_holding_lock)]
    #[tokio::test(flavor = "current_thread")]
    async fn statuses_reach_registered_waiters() {
        let _children = crate::CHILD_PROCESSES
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let reaper = Reaper::new();
        tokio::spawn(Arc::clone(&reaper).run());
        let ok = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let rx_ok = reaper.register(Pid::from_raw(ok.id() as i32));
        let killed = Command::new("/bin/sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        let rx_killed = reaper.register(Pid::from_raw(killed.id() as i32));
        assert_eq!(
            rx_ok.await.unwrap(),
            ExitStatus {
                code: 7,
                signal: None
            }
        );
        assert_eq!(
            rx_killed.await.unwrap(),
            ExitStatus {
                code: 137,
                signal: Some(9)
            }
        );
    }
}
