//! Zombie reaping that does not steal exit statuses.
//!
//! As PID 1, vmlet-init inherits every orphan of the guest and must reap them all, while
//! the server needs the exit status of the processes it started itself. Both go through one
//! [`ChildRegistry`]:
//!
//! - the server starts processes with [`ChildRegistry::spawn`], which registers the pid
//!   while holding the registry lock, and never calls `wait` itself;
//! - the reaper thread ([`ChildRegistry::reap_forever`]) waits for any child with
//!   `waitid(P_ALL, WEXITED | WNOWAIT)`, which leaves the zombie in place, then takes the
//!   lock and reaps that pid. Under the lock a registered pid therefore cannot be reaped
//!   between lookup and recording, and, being at worst a zombie until then, cannot be
//!   reused: signalling it under the lock ([`ChildRegistry::kill_group`]) is race free;
//! - statuses of registered children are kept until [`ChildRegistry::wait`] collects them;
//!   those of unregistered children (orphans) are dropped.
//!
//! When the guest has no children at all the reaper sleeps on a condition variable until
//! the next spawn: with no children, PID 1 has no descendants that could be orphaned.

use std::collections::HashMap;
use std::io;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::console;

/// A registered child: its pid and the pipes that were requested.
#[derive(Debug)]
pub struct SpawnedChild {
    /// The child's pid.
    pub pid: Pid,
    /// Its standard input, if piped.
    pub stdin: Option<ChildStdin>,
    /// Its standard output, if piped.
    pub stdout: Option<ChildStdout>,
    /// Its standard error, if piped.
    pub stderr: Option<ChildStderr>,
}

/// Why [`ChildRegistry::wait`] returned without a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed first.
    #[error("timed out")]
    TimedOut,
    /// The pid was not spawned through this registry, or was already waited for.
    #[error("pid {0} is not a registered child")]
    NotRegistered(Pid),
}

#[derive(Debug, Default)]
struct State {
    /// Registered children: `None` while running, then the exit code (or 128 + signal).
    children: HashMap<Pid, Option<i32>>,
    /// Bumped on every spawn, so a reaper that saw `ECHILD` knows when to look again.
    spawns: u64,
}

/// The registry of children whose exit status someone wants; see the module docs.
#[derive(Debug, Default)]
pub struct ChildRegistry {
    state: Mutex<State>,
    changed: Condvar,
}

impl ChildRegistry {
    /// An empty registry. Only one per process makes sense: the reaper reaps every child.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `cmd` and registers the child. Never call `wait` on it yourself: use
    /// [`ChildRegistry::wait`].
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<SpawnedChild> {
        let mut state = self.lock();
        state.spawns = state.spawns.wrapping_add(1);
        self.changed.notify_all();
        // The lock is held across fork and exec, so the reaper cannot reap the child (or
        // a child whose exec failed, which std reaps itself) before it is registered.
        let mut child = cmd.spawn()?;
        let raw = i32::try_from(child.id())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pid out of range"))?;
        let pid = Pid::from_raw(raw);
        state.children.insert(pid, None);
        Ok(SpawnedChild {
            pid,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        })
    }

    /// Waits until `pid` has exited or `deadline` passes; on success the registration is
    /// removed and the exit code (or 128 + signal) returned.
    pub fn wait(&self, pid: Pid, deadline: Option<Instant>) -> Result<i32, WaitError> {
        let mut state = self.lock();
        loop {
            match state.children.get(&pid) {
                None => return Err(WaitError::NotRegistered(pid)),
                Some(Some(status)) => {
                    let status = *status;
                    state.children.remove(&pid);
                    return Ok(status);
                }
                Some(None) => {}
            }
            state = match deadline {
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(WaitError::TimedOut);
                    }
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Sends `signal` to the registered child `pid` and to the process group it leads
    /// (children spawned with `process_group(0)`). Does nothing for pids that are not
    /// registered; processes that are already gone are not an error.
    pub fn kill_group(&self, pid: Pid, signal: Signal) -> nix::Result<()> {
        let state = self.lock();
        let Some(status) = state.children.get(&pid) else {
            return Ok(());
        };
        let group = killpg(pid, signal);
        // Once reaped, the pid may only be signalled as a group (which pins the number).
        let leader = if status.is_none() {
            kill(pid, signal)
        } else {
            Ok(())
        };
        match (group, leader) {
            (Err(e), _) | (_, Err(e)) if e != Errno::ESRCH => Err(e),
            _ => Ok(()),
        }
    }

    /// The reaper loop: reaps every child of the process forever.
    pub fn reap_forever(&self) -> ! {
        loop {
            let spawns = self.lock().spawns;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.reap(pid);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    let mut state = self.lock();
                    while state.spawns == spawns {
                        state = self
                            .changed
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
                Err(e) => {
                    console::error(format_args!("reaper: waitid: {e}"));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Reaps the zombie `pid` under the lock and records its status if it is registered.
    fn reap(&self, pid: Pid) {
        let mut state = self.lock();
        let code = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => code,
            Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
            // Not a zombie after all, or already reaped (std reaps a child whose exec
            // failed inside `spawn`): nothing to record.
            Ok(_) | Err(_) => return,
        };
        if let Some(slot) = state.children.get_mut(&pid) {
            *slot = Some(code);
            self.changed.notify_all();
        }
    }
}
