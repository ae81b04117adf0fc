//! A running pod VM ([`Vm`]): its guest agent client, what the runtime does to it
//! ([`VmControl`]; the real one is [`SocketControl`], the VMM's control socket and
//! signals), and how its VMM ended ([`VmmExit`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::sync::watch;
use vmlet_vmm_api::control::{CountersReply, Request, Response, SnapshotReply};

/// How long a snapshot may take (it writes the guest's memory).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
use vmlet_vmm_api::ExitRecord;

use super::error::SandboxError;
use super::guest::{self, GuestClient};
use super::jail;
use super::vmm::{self, VmmCommand};

/// What the runtime does to a VM it holds, besides talking to its guest.
pub trait VmControl: Send + Sync + std::fmt::Debug + 'static {
    /// Makes drive `id` read from `path` (the guest sees the new size and content).
    fn swap_drive<'a>(
        &'a self,
        id: &'a str,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), SandboxError>>;

    /// Asks the guest to power off within `grace` (the VMM stops it after that).
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, Result<(), SandboxError>>;

    /// What the VMM counted (exits, queue notifications, disk and network I/O).
    fn counters(&self) -> BoxFuture<'_, Result<CountersReply, SandboxError>>;

    /// Pauses the VM and writes its snapshot into `dir` (the VM stays paused).
    fn snapshot<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<SnapshotReply, SandboxError>>;

    /// Lets a paused VM run again.
    fn resume(&self) -> BoxFuture<'_, Result<(), SandboxError>>;

    /// Kills the VMM at once (SIGKILL); [`Vm`] waits for the exit.
    fn kill(&self);
}

/// The last `lines` lines of a text file (at most its last 16 KiB), for diagnosis: a
/// missing or unreadable file gives an empty string.
pub fn tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 16 << 10;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(MAX).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The exit record a VMM wrote as its last act (`vmlet_vmm_api::exit`), if there is
/// a whole one at `path`.
pub fn read_exit_record(path: &Path) -> Option<ExitRecord> {
    ExitRecord::parse(&std::fs::read_to_string(path).ok()?)
}

/// How a VMM that is not vmletd's child ended, from its exit record at `path`.
fn recorded_exit(path: &Path) -> VmmExit {
    read_exit_record(path).map_or(VmmExit::Unknown, |r| VmmExit::Code(r.code))
}

/// Logs a VMM's exit: the one line per VMM exit the test harness looks for (see
/// integration-tests' `failed_vmm_exits`).
fn log_exit(pid: u32, exit: VmmExit, asked: bool) {
    if exit.is_clean() || asked {
        tracing::info!(pid, "VMM exited: {exit} (as asked)");
    } else {
        tracing::warn!(pid, "VMM exited: {exit}");
    }
}

/// Kills the VMM of a boot whose future was dropped before the guest answered (the
/// caller gave up, as when CNI ADD fails while the guest boots): the kill is vmletd's
/// own, so its exit is logged as asked, and nothing waits for a guest nobody wants.
struct AbandonedBoot {
    armed: bool,
    pid: u32,
    control: PathBuf,
    asked: Arc<AtomicBool>,
}

impl Drop for AbandonedBoot {
    fn drop(&mut self) {
        // The command line names the control socket: the pid is still this VMM.
        if self.armed && vmm::alive(self.pid, &self.control) {
            self.asked.store(true, Ordering::Relaxed);
            vmm::signal(self.pid, Signal::SIGKILL);
        }
    }
}

/// How often an adopted VMM (not our child) is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// How a VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It is gone, and nothing says how: it was not vmletd's child (re-adopted after a
    /// restart) and left no exit record, as when a signal killed it.
    Unknown,
}

impl VmmExit {
    fn of(status: std::io::Result<std::process::ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => VmmExit::Code(code),
                (None, Some(sig)) => VmmExit::Signal(sig),
                (None, None) => VmmExit::Unknown,
            },
            Err(_) => VmmExit::Unknown,
        }
    }

    /// Whether the VMM ended as asked or by a guest power-off: status 0, or SIGTERM
    /// / SIGINT's 128 + signal (see vmlet-vmm's README).
    pub fn is_clean(self) -> bool {
        matches!(
            self,
            VmmExit::Code(0) | VmmExit::Code(130) | VmmExit::Code(143)
        )
    }
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            VmmExit::Code(c) => write!(f, "exit status {c}"),
            VmmExit::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by signal {s} ({sig})"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            VmmExit::Unknown => f.write_str("killed by a signal or lost (no exit record)"),
        }
    }
}

/// A running pod VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The VMM's pid.
    pub pid: u32,
    /// The guest agent.
    pub client: GuestClient,
    control: Arc<dyn VmControl>,
    exited: watch::Receiver<Option<VmmExit>>,
}

/// A vmlet-vmm process, acted on through its control socket and signals.
#[derive(Debug)]
struct SocketControl {
    socket: PathBuf,
    pid: u32,
    /// vmletd asked the VMM to end (shutdown or kill): its exit is no failure.
    asked: Arc<AtomicBool>,
}

impl VmControl for SocketControl {
    fn swap_drive<'a>(
        &'a self,
        id: &'a str,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            let request = Request::SwapDrive {
                id: id.to_owned(),
                path: path.to_owned(),
            };
            // Opened here and sent: the VMM may not be able to open it (jail).
            let file = std::fs::File::open(path).map_err(|source| SandboxError::Io {
                op: "open",
                path: path.to_owned(),
                source,
            })?;
            vmm::control_with_file(&self.socket, &request, file)
                .await
                .map(drop)
        })
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, Result<(), SandboxError>> {
        let request = Request::Shutdown {
            timeout_ms: Some(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)),
        };
        self.asked.store(true, Ordering::Relaxed);
        Box::pin(async move { vmm::control(&self.socket, &request).await.map(drop) })
    }

    fn counters(&self) -> BoxFuture<'_, Result<CountersReply, SandboxError>> {
        Box::pin(async move {
            match vmm::control(&self.socket, &Request::Counters).await? {
                Response::Counters(c) => Ok(c),
                // `Response::decode` reads the reply of the request sent.
                other => Err(SandboxError::Control {
                    socket: self.socket.clone(),
                    reason: format!("counters answered with {other:?}"),
                }),
            }
        })
    }

    fn snapshot<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<SnapshotReply, SandboxError>> {
        Box::pin(async move {
            let request = Request::Snapshot {
                dir: dir.to_owned(),
            };
            match vmm::control_within(&self.socket, &request, SNAPSHOT_TIMEOUT).await? {
                Response::Snapshot(r) => Ok(r),
                other => Err(SandboxError::Control {
                    socket: self.socket.clone(),
                    reason: format!("snapshot answered with {other:?}"),
                }),
            }
        })
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(async move { vmm::control(&self.socket, &Request::Resume).await.map(drop) })
    }

    fn kill(&self) {
        self.asked.store(true, Ordering::Relaxed);
        vmm::signal(self.pid, Signal::SIGKILL);
    }
}

/// Starts the VMM of `cmd`, jailed if it says so. Returns its pid and what ends
/// when it has exited (and has been reaped).
async fn start(cmd: &VmmCommand) -> Result<(u32, BoxFuture<'static, ExitResult>), SandboxError> {
    if let Some(spec) = cmd.jail.clone() {
        let c = cmd.clone();
        let pid = tokio::task::spawn_blocking(move || {
            jail::process::spawn(&c, &spec, c.cgroup.as_deref())
        })
        .await
        .map_err(|e| SandboxError::VmmExited(format!("starting the jailed VMM: {e}")))??;
        return Ok((pid, Box::pin(jail::process::wait(pid))));
    }
    let mut child = vmm::spawn(cmd)?;
    let Some(pid) = child.id() else {
        return Err(SandboxError::VmmExited("exited at once".into()));
    };
    Ok((pid, Box::pin(async move { child.wait().await })))
}

type ExitResult = std::io::Result<std::process::ExitStatus>;

impl Vm {
    /// Starts a VMM and waits for its guest agent. On failure the VMM is killed and
    /// reaped before this returns.
    pub async fn boot(cmd: &VmmCommand, timeout: Duration) -> Result<Vm, SandboxError> {
        let (pid, ended) = start(cmd).await?;
        let (tx, exited) = watch::channel(None);
        let asked = Arc::new(AtomicBool::new(false));
        let asked_to_end = asked.clone();
        tokio::spawn(async move {
            let exit = VmmExit::of(ended.await);
            log_exit(pid, exit, asked_to_end.load(Ordering::Relaxed));
            let _ = tx.send(Some(exit));
        });
        let rx = exited.clone();
        let mut abandoned = AbandonedBoot {
            armed: true,
            pid,
            control: cmd.control.clone(),
            asked: asked.clone(),
        };
        let control = Arc::new(SocketControl {
            socket: cmd.control.clone(),
            pid,
            asked,
        });
        let connected = guest::connect(&cmd.vsock, timeout, move || rx.borrow().is_none()).await;
        abandoned.armed = false;
        match connected {
            Ok(client) => Ok(Vm::new(pid, client, control, exited)),
            Err(e) => {
                let client = GuestClient::new(
                    tonic::transport::Endpoint::from_static("http://unused").connect_lazy(),
                );
                Vm::new(pid, client, control, exited).kill().await;
                Err(e)
            }
        }
    }

    /// Takes over a VMM a previous daemon started. Not being its parent, vmletd
    /// learns how it ended from its exit record (`exit_record`).
    pub async fn adopt(
        pid: u32,
        control: &Path,
        vsock: &Path,
        exit_record: &Path,
        timeout: Duration,
    ) -> Result<Vm, SandboxError> {
        if !vmm::alive(pid, control) {
            return Err(SandboxError::VmmExited(format!("pid {pid} is gone")));
        }
        let (tx, exited) = watch::channel(None);
        let (ctl, record) = (control.to_owned(), exit_record.to_owned());
        let asked = Arc::new(AtomicBool::new(false));
        let asked_to_end = asked.clone();
        tokio::spawn(async move {
            while vmm::alive(pid, &ctl) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            let exit = recorded_exit(&record);
            log_exit(pid, exit, asked_to_end.load(Ordering::Relaxed));
            let _ = tx.send(Some(exit));
        });
        let rx = exited.clone();
        let client = guest::connect(vsock, timeout, move || rx.borrow().is_none()).await?;
        let control = Arc::new(SocketControl {
            socket: control.to_owned(),
            pid,
            asked,
        });
        Ok(Vm::new(pid, client, control, exited))
    }

    /// A VM from its parts: for a [`Hypervisor`] other than [`Processes`]. `exited`
    /// turns `Some` when the VMM is gone.
    pub fn new(
        pid: u32,
        client: GuestClient,
        control: Arc<dyn VmControl>,
        exited: watch::Receiver<Option<VmmExit>>,
    ) -> Vm {
        Vm {
            pid,
            client,
            control,
            exited,
        }
    }

    /// Waits until the VMM has exited, and says how.
    pub async fn wait_exit_status(&self) -> VmmExit {
        let mut rx = self.exited.clone();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(e) => *e,
            // The watcher task is gone without a word: the runtime is shutting down.
            Err(_) => None,
        };
        exit.unwrap_or(VmmExit::Unknown)
    }

    /// What the VMM counted, asked over its control socket within `timeout`.
    pub async fn counters(&self, timeout: Duration) -> Result<CountersReply, SandboxError> {
        tokio::time::timeout(timeout, self.control.counters())
            .await
            .unwrap_or_else(|_| {
                Err(SandboxError::ControlTimeout {
                    pid: self.pid,
                    cmd: Request::Counters.name(),
                    timeout,
                })
            })
    }

    /// Pauses the VM and writes its snapshot into `dir`; it stays paused.
    pub async fn snapshot(&self, dir: &Path) -> Result<SnapshotReply, SandboxError> {
        self.control.snapshot(dir).await
    }

    /// Lets the paused VM run again.
    pub async fn resume(&self) -> Result<(), SandboxError> {
        self.control.resume().await
    }

    /// Asks the guest agent whether it is alive, waiting at most `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), SandboxError> {
        if !self.running() {
            return Err(SandboxError::VmmExited(format!("pid {} is gone", self.pid)));
        }
        self.client
            .clone()
            .health(guest::req(vmlet_proto::agent::HealthRequest {}, timeout))
            .await
            .map(drop)
            .map_err(|e| SandboxError::GuestTimeout {
                timeout,
                last: format!("Health: {e}"),
            })
    }

    /// Whether the VMM still runs.
    pub fn running(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// Makes drive `id` read from `path` (the guest sees the new size and content).
    pub async fn swap_drive(&self, id: &str, path: &Path) -> Result<(), SandboxError> {
        self.control.swap_drive(id, path).await
    }

    async fn wait_exit(&self, limit: Duration) -> bool {
        let mut rx = self.exited.clone();
        let done = tokio::time::timeout(limit, rx.wait_for(Option::is_some))
            .await
            .is_ok();
        done
    }

    /// Powers the guest off (it has `grace` to do so), then kills the VMM if needed.
    /// Returns once the VMM is gone.
    pub async fn stop(&self, grace: Duration) {
        if !self.running() {
            return;
        }
        if let Err(e) = self.control.shutdown(grace).await {
            tracing::warn!(pid = self.pid, "graceful VM shutdown: {e}");
        }
        if self.wait_exit(grace + Duration::from_secs(5)).await {
            return;
        }
        self.kill().await;
    }

    /// Kills the VMM and waits until it is gone.
    pub async fn kill(&self) {
        self.control.kill();
        if !self.wait_exit(Duration::from_secs(10)).await {
            tracing::error!(pid = self.pid, "the VMM survived SIGKILL for 10 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        assert_eq!(tail(&p, 2), "line 4998\nline 4999");
        assert_eq!(tail(&dir.path().join("none"), 3), "");
    }

    #[test]
    fn exits_say_how() {
        let code = VmmExit::of(Ok(std::process::ExitStatus::from_raw(1 << 8)));
        assert_eq!(code, VmmExit::Code(1));
        assert_eq!(code.to_string(), "exit status 1");
        assert!(!code.is_clean());
        let sig = VmmExit::of(Ok(std::process::ExitStatus::from_raw(libc::SIGSEGV)));
        assert_eq!(sig.to_string(), "killed by signal 11 (SIGSEGV)");
        assert!(!sig.is_clean());
        assert!(VmmExit::Code(0).is_clean() && VmmExit::Code(143).is_clean());
        assert_eq!(
            VmmExit::Unknown.to_string(),
            "killed by a signal or lost (no exit record)"
        );
    }

    #[test]
    fn an_adopted_vmm_ends_as_its_exit_record_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm-exit");
        // No record: a signal killed it, or it is lost.
        assert_eq!(recorded_exit(&path), VmmExit::Unknown);
        // A line cut off midway (killed while writing) is no record either.
        std::fs::write(&path, "vmlet-vmm: error: vCPU 0: KVM_RUN fa").unwrap();
        assert_eq!(recorded_exit(&path), VmmExit::Unknown);
        let line = vmlet_vmm_api::ExitRecord {
            code: 1,
            reason: "vCPU 0: KVM_RUN failed".into(),
        }
        .line();
        std::fs::write(&path, format!("{line}\n")).unwrap();
        assert_eq!(recorded_exit(&path), VmmExit::Code(1));
        assert_eq!(
            read_exit_record(&path).unwrap().reason,
            "vCPU 0: KVM_RUN failed"
        );
    }
}
