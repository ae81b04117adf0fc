//! Exec and attach sessions (`*.channel.k8s.io`): the transport-independent core
//! here, SPDY and WebSocket transports in their modules.

pub mod spdy;
pub mod websocket;

use tokio::io::{duplex, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::backend::{ExecStreams, Output, Stdin, StreamBackend};
use crate::request::{AttachRequest, ExecRequest};
use crate::resize;
use crate::status::Outcome;

/// Buffer of each pipe between a transport and the backend.
const PIPE: usize = 64 << 10;

/// Protocol generations; each adds to the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`.
    V1,
    /// `v2.channel.k8s.io`: error stream only on failure, no resize.
    V2,
    /// `v3.channel.k8s.io`: resize stream.
    V3,
    /// `v4.channel.k8s.io`: Status JSON on the error stream (and v5 over SPDY).
    V4,
    /// `v5.channel.k8s.io` over WebSocket: the stdin close signal.
    V5,
}

/// What a session serves.
#[derive(Debug, Clone)]
pub enum Target {
    /// Run a command.
    Exec(ExecRequest),
    /// Attach to the main process.
    Attach(AttachRequest),
}

impl Target {
    /// (tty, stdin, stdout, stderr) as the CRI request set them.
    pub fn flags(&self) -> (bool, bool, bool, bool) {
        match self {
            Target::Exec(r) => (r.tty, r.stdin, r.stdout, r.stderr && !r.tty),
            Target::Attach(r) => (r.tty, r.stdin, r.stdout, r.stderr && !r.tty),
        }
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The transport's ends of a session's streams.
#[derive(Default)]
pub struct Transport {
    /// From the client's stdin.
    pub stdin: Option<Reader>,
    /// To the client's stdout; shut down once the backend's output ends.
    pub stdout: Option<Writer>,
    /// To the client's stderr; likewise.
    pub stderr: Option<Writer>,
    /// Resize events (JSON) from the client.
    pub resize: Option<Reader>,
}

/// Runs the backend with pipes to the transport's streams. Returns once the backend
/// has returned and every byte of its output has been handed to the transport (and
/// stdout/stderr shut down), so the caller can write the status next. The stdin and
/// resize copies end with this call.
pub async fn run<B: StreamBackend>(backend: &B, target: Target, t: Transport) -> Outcome {
    let mut inputs = JoinSet::new();
    let mut outputs = JoinSet::new();
    let stdin = t.stdin.map(|mut from| {
        let (mut ours, theirs) = duplex(PIPE);
        inputs.spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut ours).await;
            // The client closed stdin: the backend reads EOF.
            let _ = ours.shutdown().await;
        });
        Stdin(theirs)
    });
    let mut output = |to: Option<Writer>| {
        to.map(|mut to| {
            let (mut ours, theirs) = duplex(PIPE);
            outputs.spawn(async move {
                let _ = tokio::io::copy(&mut ours, &mut to).await;
                let _ = to.shutdown().await;
            });
            Output(theirs)
        })
    };
    let stdout = output(t.stdout);
    let stderr = output(t.stderr);
    let resize = t.resize.map(|r| {
        let (tx, rx) = mpsc::channel(8);
        inputs.spawn(resize::pump(r, tx));
        rx
    });
    let streams = ExecStreams {
        stdin,
        stdout,
        stderr,
        resize,
    };
    let outcome = match target {
        Target::Exec(req) => match backend.exec(req, streams).await {
            Ok(s) => Outcome::Exited(s.code),
            Err(e) => Outcome::Failed(e.to_string()),
        },
        Target::Attach(req) => match backend.attach(req, streams).await {
            Ok(()) => Outcome::Exited(0),
            Err(e) => Outcome::Failed(e.to_string()),
        },
    };
    while outputs.join_next().await.is_some() {}
    outcome
}
