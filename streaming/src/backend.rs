//! What a runtime implements to serve streaming sessions. The server owns the wire
//! protocols; a backend sees plain byte pipes, resize events and a port to dial.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

use crate::request::{AttachRequest, ExecRequest};

/// A terminal size from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code; a backend reports death by signal N as 128 + N. Kubernetes clients
    /// accept 0..=255 only; other values are reported as 255.
    pub code: i32,
}

/// A backend failure, reported to the client as an internal error.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The container or pod does not exist (any more).
    #[error("{0} not found")]
    NotFound(String),
    /// Anything else, with a message for the client.
    #[error("{0}")]
    Failed(String),
}

/// The client's stdin. EOF when the client closes it.
#[derive(Debug)]
pub struct Stdin(pub(crate) DuplexStream);

/// stdout or stderr towards the client. Dropping it (or `shutdown`) ends the stream.
#[derive(Debug)]
pub struct Output(pub(crate) DuplexStream);

/// One forwarded connection: bytes from and to the client's local socket. EOF on
/// read when the client's side is done; dropping it ends the connection.
#[derive(Debug)]
pub struct PortStream(pub(crate) DuplexStream);

/// The streams of one exec or attach session, as the request asked for them.
#[derive(Debug)]
pub struct ExecStreams {
    /// The client's stdin.
    pub stdin: Option<Stdin>,
    /// Towards the client's stdout (with a tty: the terminal's output).
    pub stdout: Option<Output>,
    /// Towards the client's stderr (never with a tty).
    pub stderr: Option<Output>,
    /// Terminal sizes (tty sessions only). The client sends its first size right
    /// after the session opens, so wait briefly for it before starting a terminal.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// A runtime's side of streaming. Each call lasts as long as its session; the
/// streams it gets must be dropped (or moved into nothing that outlives the call)
/// when it returns, which is what ends them towards the client. When the client
/// goes away first, the call's future is dropped: an exec should then stop its
/// process, an attach just detach.
pub trait StreamBackend: Send + Sync + 'static {
    /// Runs `req.cmd` in a container and returns its exit status.
    fn exec(
        &self,
        req: ExecRequest,
        streams: ExecStreams,
    ) -> impl Future<Output = Result<ExitStatus, BackendError>> + Send;

    /// Connects the streams to a running container's main process until it exits
    /// or, with stdin, the client closes stdin.
    fn attach(
        &self,
        req: AttachRequest,
        streams: ExecStreams,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Connects `stream` to `port` inside the pod until either side ends.
    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        stream: PortStream,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

impl AsyncRead for Stdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

macro_rules! write_via_pipe {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, buf)
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }
    };
}

write_via_pipe!(Output);
write_via_pipe!(PortStream);

impl AsyncRead for PortStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}
