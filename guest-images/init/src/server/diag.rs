//! The `Diagnostics` service: tests of the VM itself (vsock both ways, commands in the
//! guest), not of containers.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_vsock::{VsockAddr, VsockStream, VMADDR_CID_HOST};
use tonic::{Request, Response, Status};
use vmlet_proto::agent::{self as pb, diagnostics_server::Diagnostics};

use crate::container::spec::DEFAULT_PATH;
use crate::container::stdio::{nonblocking, read_fd, write_fd};
use crate::pid1::Reaper;

/// Most bytes of each output stream `RunCommand` returns; the rest is read and dropped.
const MAX_OUTPUT: usize = 16 << 20;
/// `RunCommand`'s limit when the request has none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The service.
#[derive(Debug)]
pub struct DiagnosticsService {
    reaper: Arc<Reaper>,
}

impl DiagnosticsService {
    /// A service whose commands are reaped by `reaper`.
    pub fn new(reaper: Arc<Reaper>) -> Self {
        DiagnosticsService { reaper }
    }
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

async fn collect(fd: Option<OwnedFd>) -> Vec<u8> {
    let Some(fd) = fd else { return Vec::new() };
    let Ok(fd) = nonblocking(fd) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match read_fd(&fd, &mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let keep = n.min(MAX_OUTPUT - out.len().min(MAX_OUTPUT));
                out.extend_from_slice(&buf[..keep]);
            }
        }
    }
}

#[tonic::async_trait]
impl Diagnostics for DiagnosticsService {
    async fn echo(
        &self,
        req: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        Ok(Response::new(pb::EchoResponse {
            payload: req.into_inner().payload,
        }))
    }

    async fn connect_echo(
        &self,
        req: Request<pb::ConnectEchoRequest>,
    ) -> Result<Response<pb::ConnectEchoResponse>, Status> {
        let port = req.into_inner().port;
        let mut stream = VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, port))
            .await
            .map_err(|e| Status::unavailable(format!("connect to host port {port}: {e}")))?;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf).await.map_err(internal("read"))?;
            if n == 0 {
                break;
            }
            stream
                .write_all(&buf[..n])
                .await
                .map_err(internal("write"))?;
            total += n as u64;
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        Ok(Response::new(pb::ConnectEchoResponse { bytes: total }))
    }

    async fn run_command(
        &self,
        req: Request<pb::RunCommandRequest>,
    ) -> Result<Response<pb::RunCommandResponse>, Status> {
        let r = req.into_inner();
        let Some(program) = r.args.first() else {
            return Err(Status::invalid_argument("args is required"));
        };
        let timeout = match r.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let mut cmd = Command::new(program);
        cmd.args(&r.args[1..])
            .env("PATH", DEFAULT_PATH)
            .stdin(if r.stdin.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| Status::failed_precondition(format!("cannot run {program:?}: {e}")))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        // Registered before the next await: see the reaper's rules.
        let exit = self.reaper.register(pid);
        let stdin = child.stdin.take().map(OwnedFd::from);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let input = r.stdin;
        let feed = async move {
            if let Some(fd) = stdin.and_then(|fd| nonblocking(fd).ok()) {
                let _ = write_fd(&fd, &input).await;
            }
        };
        let run = async {
            let (_, out, err, status) = tokio::join!(feed, collect(stdout), collect(stderr), exit);
            (out, err, status)
        };
        let (stdout, stderr, exit_code, timed_out) = match tokio::time::timeout(timeout, run).await
        {
            Ok((out, err, status)) => (out, err, status.map_or(-1, |s| s.code), false),
            Err(_) => {
                let _ = killpg(pid, Signal::SIGKILL);
                (Vec::new(), Vec::new(), 137, true)
            }
        };
        Ok(Response::new(pb::RunCommandResponse {
            exit_code,
            stdout,
            stderr,
            timed_out,
        }))
    }
}
