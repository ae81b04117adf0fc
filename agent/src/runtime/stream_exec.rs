//! Streaming exec (`kubectl exec`): a process in a running container with its stdin,
//! output and terminal relayed over the guest agent's process calls while the
//! session lasts.
//!
//! The process never outlives its session: when the session's future is dropped
//! (the client went away), a guard kills it with SIGKILL and reaps it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use vmlet_proto::agent as pb;
use vmlet_streaming::{ExecStreams, TerminalSize};

use super::error::RuntimeError;
use super::exec::{exec_id, target};
use super::state::Inner;
use crate::sandbox::{guest, GuestClient};

/// How long to wait for the client's first terminal size before starting the
/// process with none (clients send it right after the session opens).
pub(super) const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);
/// Deadline of one long-polling call (ReadOutput, WaitProcess, a blocked WriteStdin).
const POLL: Duration = Duration::from_secs(30);
/// Bytes read from the client's stdin per WriteStdin.
const STDIN_CHUNK: usize = 32 << 10;
/// Bytes asked for per ReadOutput.
const OUTPUT_CHUNK: u32 = 256 << 10;

/// One process in the guest: an exec, or (exec id "") a container's main process.
#[derive(Clone)]
pub(super) struct Proc {
    pub(super) client: GuestClient,
    pub(super) container_id: String,
    pub(super) exec_id: String,
}

impl Proc {
    pub(super) async fn write_stdin(&self, mut data: &[u8]) -> Result<(), tonic::Status> {
        while !data.is_empty() {
            let r = self
                .client
                .clone()
                .write_stdin(guest::req(
                    pb::WriteStdinRequest {
                        container_id: self.container_id.clone(),
                        exec_id: self.exec_id.clone(),
                        data: data.to_vec(),
                    },
                    POLL,
                ))
                .await;
            match r {
                Ok(r) => {
                    let n = (r.into_inner().written as usize).min(data.len());
                    data = &data[n..];
                }
                // The pipe stayed full (the process does not read): nothing was
                // written; try again.
                Err(s) if guest::deadline_passed(&s) => {}
                Err(s) => return Err(s),
            }
        }
        Ok(())
    }

    pub(super) async fn close_stdin(&self) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .close_stdin(guest::req(
                pb::CloseStdinRequest {
                    container_id: self.container_id.clone(),
                    exec_id: self.exec_id.clone(),
                },
                guest::CALL,
            ))
            .await
            .map(|_| ())
    }

    pub(super) async fn resize(&self, size: TerminalSize) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .resize_tty(guest::req(
                pb::ResizeTtyRequest {
                    container_id: self.container_id.clone(),
                    exec_id: self.exec_id.clone(),
                    size: Some(pb_size(size)),
                },
                guest::CALL,
            ))
            .await
            .map(|_| ())
    }

    /// Relays one output stream to its end. Output the client no longer takes is
    /// read and dropped, so the process never blocks on a full pipe.
    async fn relay_output<W: AsyncWrite + Unpin>(
        &self,
        stream: pb::Stream,
        mut to: Option<W>,
    ) -> Result<(), tonic::Status> {
        let mut offset = 0u64;
        loop {
            let r = self
                .client
                .clone()
                .read_output(guest::req(
                    pb::ReadOutputRequest {
                        container_id: self.container_id.clone(),
                        exec_id: self.exec_id.clone(),
                        stream: stream as i32,
                        offset,
                        max_bytes: OUTPUT_CHUNK,
                    },
                    POLL,
                ))
                .await;
            let r = match r {
                Ok(r) => r.into_inner(),
                Err(s) if guest::deadline_passed(&s) => continue,
                Err(s) => return Err(s),
            };
            if let Some(w) = to.as_mut() {
                if !r.data.is_empty() {
                    let sent = async {
                        w.write_all(&r.data).await?;
                        w.flush().await
                    };
                    if let Err(e) = sent.await {
                        tracing::debug!(exec = %self.exec_id, "client stopped reading {stream:?}: {e}");
                        to = None;
                    }
                }
            }
            offset = r.offset + r.data.len() as u64;
            if r.eof {
                if let Some(mut w) = to {
                    let _ = w.shutdown().await;
                }
                return Ok(());
            }
        }
    }

    /// The exit code once the process has ended (128 + N for signal N).
    async fn wait(&self) -> Result<i32, tonic::Status> {
        loop {
            let r = self
                .client
                .clone()
                .wait_process(guest::req(
                    pb::WaitProcessRequest {
                        container_id: self.container_id.clone(),
                        exec_id: self.exec_id.clone(),
                    },
                    POLL,
                ))
                .await;
            match r {
                Ok(r) => return Ok(r.into_inner().status.unwrap_or_default().exit_code),
                Err(s) if guest::deadline_passed(&s) => continue,
                Err(s) => return Err(s),
            }
        }
    }

    /// SIGKILL and reap, so the guest forgets the process.
    async fn kill(self) {
        let mut c = self.client.clone();
        let _ = c
            .signal_process(guest::req(
                pb::SignalProcessRequest {
                    container_id: self.container_id.clone(),
                    exec_id: self.exec_id.clone(),
                    signal: libc::SIGKILL as u32,
                },
                guest::CALL,
            ))
            .await;
        let _ = c
            .wait_process(guest::req(
                pb::WaitProcessRequest {
                    container_id: self.container_id,
                    exec_id: self.exec_id,
                },
                guest::CALL,
            ))
            .await;
    }
}

fn pb_size(s: TerminalSize) -> pb::TerminalSize {
    pb::TerminalSize {
        rows: u32::from(s.height),
        cols: u32::from(s.width),
    }
}

/// Kills the process when dropped armed: the session ended before the process did.
struct KillOnDrop(Option<Proc>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            tracing::info!(container = %p.container_id, exec = %p.exec_id, "exec session gone: killing its process");
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(p.kill());
            }
        }
    }
}

/// Relays the client's stdin to the process until the client's EOF.
pub(super) async fn copy_stdin<R: AsyncRead + Unpin>(
    p: &Proc,
    mut from: R,
) -> Result<(), tonic::Status> {
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        p.write_stdin(&buf[..n]).await?;
    }
}

/// Relays the client's stdin until its EOF, then closes the process's stdin.
async fn relay_stdin<R: AsyncRead + Unpin>(p: &Proc, from: R) -> Result<(), tonic::Status> {
    copy_stdin(p, from).await?;
    p.close_stdin().await
}

pub(super) async fn relay_resize(p: &Proc, rx: &mut mpsc::Receiver<TerminalSize>) {
    while let Some(size) = rx.recv().await {
        if let Err(s) = p.resize(size).await {
            tracing::debug!(exec = %p.exec_id, "ResizeTty: {s}");
        }
    }
}

/// Runs `cmd` in container `id` with the session's streams; returns its exit code.
pub async fn exec(
    inner: &Arc<Inner>,
    id: &str,
    cmd: Vec<String>,
    tty: bool,
    streams: ExecStreams,
) -> Result<i32, RuntimeError> {
    let (client, mut process) = target(inner, id, cmd)?;
    let ExecStreams {
        stdin,
        stdout,
        stderr,
        mut resize,
    } = streams;
    process.terminal = tty;
    process.open_stdin = stdin.is_some();
    if tty {
        if let Some(rx) = resize.as_mut() {
            if let Ok(Some(size)) = tokio::time::timeout(FIRST_SIZE_WAIT, rx.recv()).await {
                process.terminal_size = Some(pb_size(size));
            }
        }
    }
    let p = Proc {
        client,
        container_id: id.to_owned(),
        exec_id: exec_id()?,
    };
    p.client
        .clone()
        .exec_process(guest::req(
            pb::ExecProcessRequest {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
                process: Some(process),
            },
            guest::CALL,
        ))
        .await
        .map_err(RuntimeError::guest("ExecProcess"))?;
    let mut guard = KillOnDrop(Some(p.clone()));

    let output = async {
        let out = p.relay_output(pb::Stream::Stdout, stdout);
        // With a terminal, stdout carries everything.
        let err = async {
            if tty {
                drop(stderr);
                Ok(())
            } else {
                p.relay_output(pb::Stream::Stderr, stderr).await
            }
        };
        tokio::try_join!(out, err).map_err(RuntimeError::guest("ReadOutput"))?;
        p.wait().await.map_err(RuntimeError::guest("WaitProcess"))
    };
    // Input goes on until the process ends; its own end does not end the session.
    let input = async {
        let stdin = async {
            if let Some(s) = stdin {
                if let Err(e) = relay_stdin(&p, s).await {
                    tracing::debug!(exec = %p.exec_id, "stdin: {e}");
                }
            }
        };
        let resize = async {
            if let Some(rx) = resize.as_mut() {
                relay_resize(&p, rx).await;
            }
        };
        tokio::join!(stdin, resize);
        std::future::pending::<std::convert::Infallible>().await
    };
    let code = tokio::select! {
        code = output => code,
        never = input => match never {},
    };
    match &code {
        // The process has ended and WaitProcess reaped it.
        Ok(_) => guard.0 = None,
        Err(e) => tracing::warn!(container = %id, exec = %p.exec_id, "exec session failed: {e}"),
    }
    code
}
