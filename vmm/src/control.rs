//! The control socket: newline-delimited JSON over a unix stream socket, served
//! on the VMM's event loop. One request per line, one response line each; a
//! connection may carry many requests. The protocol (requests, replies, version)
//! is `vmlet_vmm_api::control`; this module executes it:
//!
//! - `status`: run state, vCPUs, memory, drives, and the protocol version
//! - `pause`, `resume`: the vCPUs
//! - `swap_drive`: the drive's backing file is replaced and the guest gets a
//!   config-change interrupt. A jailed VMM cannot open the host's image files: the
//!   client sends the file, opened, with the request (`SCM_RIGHTS`); `path` then only
//!   names it. Without a file the VMM opens `path` itself.
//! - `counters`: what the vCPUs and devices counted (`crate::counters`)
//! - `snapshot`: pauses the VM and writes its snapshot (`crate::snapshot`); the VM
//!   stays paused, to be resumed or ended
//! - `shutdown`: asks the guest to power off (a connection to its vsock port
//!   [`GUEST_POWER_PORT`]); if it has not after `timeout_ms` (default 5000), the
//!   VMM stops it and exits with status 2

use crate::builder::VmParts;
use crate::uds::BindError;
use crate::vstate::vcpu::RunState;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmlet_vmm_api::control::{
    DriveStatus, Request, Response, StatusReply, SwapDriveReply, VmState, PROTOCOL_VERSION,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Guest vsock port whose connection asks the guest init to power off.
pub const GUEST_POWER_PORT: u32 = 1023;
/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;
const DEFAULT_SHUTDOWN_MS: u64 = 5000;
/// Most files a connection may have sent and not yet used; more are closed.
const MAX_PENDING_FILES: usize = 4;
const LISTENER: u32 = 0;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process serves this path.
    #[error("control socket {0} is in use by another process")]
    Busy(PathBuf),
    /// The socket cannot be created.
    #[error("cannot bind the control socket: {0}")]
    Bind(BindError),
}

/// Binds the control socket at `path` (mode 0600). A live socket there is an
/// error; a stale one left by a dead process is replaced.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ControlError> {
    crate::uds::bind(path).map_err(|e| match e {
        BindError::InUse(p) => ControlError::Busy(p),
        other => ControlError::Bind(other),
    })
}

/// State shared between the control server and the run loop.
#[derive(Default)]
pub struct Lifecycle {
    /// When set, the VM is stopped at this instant unless it ended before.
    pub shutdown_deadline: Mutex<Option<Instant>>,
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Files received with the requests (`SCM_RIGHTS`), oldest first; each
    /// `swap_drive` takes the oldest.
    files: VecDeque<File>,
}

/// The control socket server (an event-loop subscriber).
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<i32, Conn>,
    vm: Arc<VmParts>,
    lifecycle: Arc<Lifecycle>,
}

impl ControlServer {
    /// Serves `listener` (bound at `path`) for `vm`.
    pub fn new(
        listener: UnixListener,
        path: PathBuf,
        vm: Arc<VmParts>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        ControlServer {
            listener,
            path,
            conns: HashMap::new(),
            vm,
            lifecycle,
        }
    }

    /// Executes one request line and returns the reply line (without newline).
    pub fn handle_line(&mut self, line: &[u8]) -> String {
        self.handle_line_with(line, &mut VecDeque::new())
    }

    /// [`Self::handle_line`], with the files the connection sent along.
    fn handle_line_with(&mut self, line: &[u8], files: &mut VecDeque<File>) -> String {
        let reply = Request::decode(line)
            .map_err(|e| e.to_string())
            .and_then(|req| self.execute(req, files))
            .and_then(|response| response.encode().map_err(|e| e.to_string()));
        reply.unwrap_or_else(|e| Response::encode_error(&e))
    }

    fn execute(&mut self, req: Request, files: &mut VecDeque<File>) -> Result<Response, String> {
        match req {
            Request::Status => Ok(Response::Status(self.status())),
            Request::Counters => Ok(Response::Counters(crate::counters::reply(
                &self.vm.control.exits,
                &self.vm.devices,
            ))),
            Request::Pause => {
                self.vm
                    .vcpus
                    .pause(Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                Ok(Response::Done)
            }
            Request::Resume => {
                self.vm.vcpus.resume();
                Ok(Response::Done)
            }
            Request::Snapshot { dir } => {
                let vm = &self.vm;
                let reply =
                    crate::snapshot::take(&vm.vcpus, &vm.snapshot, vm.vcpu_count, vm.mem_mib, &dir)
                        .map_err(|e| e.to_string())?;
                tracing::info!(
                    "snapshot in {}: {} MiB of memory ({} MiB on disk), {} bytes of state, {} ms",
                    dir.display(),
                    reply.memory_bytes >> 20,
                    reply.memory_file_bytes >> 20,
                    reply.state_bytes,
                    reply.took_ms
                );
                Ok(Response::Snapshot(reply))
            }
            Request::SwapDrive { id, path } => {
                let drive = self
                    .vm
                    .drives
                    .get(&id)
                    .ok_or_else(|| format!("no drive with id {id:?}"))?;
                let mut drive = drive.lock().unwrap_or_else(|e| e.into_inner());
                match files.pop_front() {
                    Some(file) => drive.swap_file(file, &path),
                    None => drive.swap(&path),
                }
                .map_err(|e| e.to_string())?;
                Ok(Response::SwapDrive(SwapDriveReply {
                    sectors: drive.disk().sectors(),
                }))
            }
            Request::Shutdown { timeout_ms } => {
                let timeout = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_MS));
                *self
                    .lifecycle
                    .shutdown_deadline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + timeout);
                if self.vm.vcpus.state() == RunState::Paused {
                    self.vm.vcpus.resume();
                }
                match &self.vm.vsock_uds {
                    Some(uds) => ask_guest_to_power_off(uds.clone()),
                    None => tracing::warn!("no vsock: cannot ask the guest to power off"),
                }
                Ok(Response::Done)
            }
        }
    }

    fn status(&self) -> StatusReply {
        let state = match self.vm.vcpus.state() {
            RunState::Running => VmState::Running,
            RunState::Paused => VmState::Paused,
            RunState::Stopped => VmState::Stopped,
        };
        let mut drives: Vec<DriveStatus> = self
            .vm
            .drives
            .values()
            .map(|d| {
                let d = d.lock().unwrap_or_else(|e| e.into_inner());
                DriveStatus {
                    id: d.id().to_owned(),
                    path: d.disk().path().to_owned(),
                    read_only: d.disk().read_only(),
                    sectors: d.disk().sectors(),
                }
            })
            .collect();
        drives.sort_by(|a, b| a.id.cmp(&b.id));
        StatusReply {
            version: PROTOCOL_VERSION,
            state,
            vcpus: self.vm.vcpu_count,
            mem_mib: self.vm.mem_mib,
            drives,
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(e) = ops.add(Events::with_data(&stream, fd as u32, EventSet::IN)) {
                        tracing::warn!("control connection: {e}");
                        continue;
                    }
                    self.conns.insert(
                        fd,
                        Conn {
                            stream,
                            buf: Vec::new(),
                            files: VecDeque::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("control accept: {e}");
                    break;
                }
            }
        }
    }

    /// Reads what the client sent; answers complete lines. Returns false when the
    /// connection should close (the caller removes it from epoll before closing it).
    fn serve(&mut self, fd: i32) -> bool {
        let Some(mut conn) = self.conns.remove(&fd) else {
            return false;
        };
        let open = self.serve_conn(&mut conn);
        self.conns.insert(fd, conn);
        open
    }

    fn serve_conn(&mut self, conn: &mut Conn) -> bool {
        let open = loop {
            match receive(conn) {
                Ok(0) => break false,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break false,
            }
        };
        while let Some(pos) = conn.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = conn.buf.drain(..=pos).collect();
            let reply = self.handle_line_with(&line[..line.len() - 1], &mut conn.files);
            let mut out = reply.into_bytes();
            out.push(b'\n');
            // Replies are small; a client that does not read them is dropped.
            conn.stream.set_nonblocking(false).ok();
            conn.stream
                .set_write_timeout(Some(Duration::from_secs(1)))
                .ok();
            let sent = conn.stream.write_all(&out).is_ok();
            conn.stream.set_nonblocking(true).ok();
            if !sent {
                return false;
            }
        }
        open && conn.buf.len() <= MAX_LINE
    }
}

/// Reads what is there into the connection's buffer, and the files sent with it
/// (at most [`MAX_PENDING_FILES`] kept). Returns the bytes read (0: closed).
fn receive(conn: &mut Conn) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let mut fds = [-1; MAX_PENDING_FILES];
    let mut iov = [libc::iovec {
        iov_base: chunk.as_mut_ptr().cast(),
        iov_len: chunk.len(),
    }];
    // SAFETY: the iovec points into `chunk`, which outlives the call and may hold
    // any bytes.
    let (n, nfds) = unsafe { conn.stream.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    for &fd in fds.iter().take(nfds) {
        // SAFETY: recvmsg just gave us this descriptor; nothing else owns it.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if conn.files.len() < MAX_PENDING_FILES {
            conn.files.push_back(file);
        }
    }
    conn.buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Opens a hybrid-vsock connection to the guest's power port on a short-lived
/// thread (the event loop this runs on must keep serving the vsock device).
fn ask_guest_to_power_off(uds: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("poweroff".into())
        .spawn(move || {
            let result = (|| -> std::io::Result<()> {
                let mut s = UnixStream::connect(&uds)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(format!("CONNECT {GUEST_POWER_PORT}\n").as_bytes())?;
                let mut reply = [0u8; 32];
                // The guest may reset before the answer gets out: a closed stream
                // is not a failure, only an explicit refusal is.
                let n = s.read(&mut reply).unwrap_or(0);
                if n > 0 && !reply[..n].starts_with(b"OK ") {
                    return Err(std::io::Error::other("the guest refused the power port"));
                }
                Ok(())
            })();
            if let Err(e) = result {
                tracing::warn!("asking the guest to power off: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("spawning the power-off thread: {e}");
    }
}

impl MutEventSubscriber for ControlServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == LISTENER && events.fd() == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        let fd = events.fd();
        if !self.serve(fd) {
            // Leave epoll while the fd is still open, then close it.
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                tracing::warn!("control connection: {e}");
            }
            self.conns.remove(&fd);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.listener, LISTENER, EventSet::IN)) {
            tracing::error!("registering the control socket: {e}");
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_sent_with_requests_are_kept_in_order() {
        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut first = tempfile::tempfile().unwrap();
        first.write_all(b"first").unwrap();
        let second = tempfile::tempfile().unwrap();
        client
            .send_with_fds(&[&b"{}\n"[..]], &[first.as_raw_fd(), second.as_raw_fd()])
            .unwrap();
        let mut conn = Conn {
            stream: server,
            buf: Vec::new(),
            files: VecDeque::new(),
        };
        assert_eq!(receive(&mut conn).unwrap(), 3);
        assert_eq!(conn.buf, b"{}\n");
        assert_eq!(conn.files.len(), 2);
        let got = conn.files.pop_front().unwrap();
        assert_eq!(got.metadata().unwrap().len(), 5);
        drop(client);
        assert_eq!(receive(&mut conn).unwrap(), 0);
    }

    #[test]
    fn busy_and_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let live = bind_unix(&path).unwrap();
        assert!(matches!(bind_unix(&path), Err(ControlError::Busy(_))));
        drop(live); // file stays behind, nobody listens: stale
        let again = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(again);
    }
}
