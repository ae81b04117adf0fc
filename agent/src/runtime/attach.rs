//! Streaming attach (`kubectl attach`): a session joined to a running container's
//! main process. Its output comes from the log copy (the guest's only reader of
//! it), from the moment of attaching on; its stdin and terminal size go to the
//! process through the guest agent.
//!
//! The session ends when the container's output ends (it exited), or when the
//! client closes stdin: with `stdin_once` and no terminal that also closes the
//! container's stdin and the session waits for its output to end; otherwise the
//! client just detaches (containerd's rules, kubectl#291).

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use vmlet_cri::runtime::ContainerState;
use vmlet_streaming::ExecStreams;

use super::error::RuntimeError;
use super::state::Inner;
use super::stream_exec::{copy_stdin, relay_resize, Proc, FIRST_SIZE_WAIT};
use super::util::lock;
use crate::logs::Chunk;

/// Writes `data` to `to`; a client that stopped reading is let go (the session
/// goes on for the other stream).
async fn send<W: AsyncWrite + Unpin>(to: &mut Option<W>, data: &[u8]) {
    if let Some(w) = to.as_mut() {
        let sent = async {
            w.write_all(data).await?;
            w.flush().await
        };
        if let Err(e) = sent.await {
            tracing::debug!("attach client stopped reading: {e}");
            *to = None;
        }
    }
}

/// Relays the container's output until it ends (the log copy is done).
async fn relay_output<W: AsyncWrite + Unpin>(
    id: &str,
    mut rx: broadcast::Receiver<Chunk>,
    mut done: watch::Receiver<bool>,
    mut stdout: Option<W>,
    mut stderr: Option<W>,
) {
    loop {
        tokio::select! {
            // Chunks first: everything sent before the copy ended is delivered.
            biased;
            chunk = rx.recv() => match chunk {
                Ok(c) if c.stderr => send(&mut stderr, &c.data).await,
                Ok(c) => send(&mut stdout, &c.data).await,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(container = %id, "attach client fell behind: {n} output chunks not sent");
                }
                Err(RecvError::Closed) => break,
            },
            _ended = async { done.wait_for(|d| *d).await.is_ok() } => {
                // The copy sends before it says it is done: what is queued is all.
                while let Ok(c) = rx.try_recv() {
                    if c.stderr {
                        send(&mut stderr, &c.data).await;
                    } else {
                        send(&mut stdout, &c.data).await;
                    }
                }
                break;
            }
        }
    }
    for w in [stdout, stderr].into_iter().flatten() {
        let mut w = w;
        let _ = w.shutdown().await;
    }
}

/// Attaches the session's streams to running container `id` until it ends.
pub async fn attach(
    inner: &Arc<Inner>,
    id: &str,
    streams: ExecStreams,
) -> Result<(), RuntimeError> {
    let c = inner.container(id)?;
    // Subscribed before the state is checked, so an exit after the check is seen.
    let rx = c.output.subscribe();
    let done = c.log_done.subscribe();
    let (state, tty, has_stdin, stdin_once) = {
        let r = lock(&c.record);
        (r.state, r.config.tty, r.config.stdin, r.config.stdin_once)
    };
    if state != ContainerState::Running {
        return Err(RuntimeError::Precondition(format!(
            "container {id} is {state:?}: attach needs a running container"
        )));
    }
    let vm = c.pod.vm().filter(|v| v.running()).ok_or_else(|| {
        RuntimeError::Precondition(format!("the VM of container {id} is not running"))
    })?;
    let p = Proc {
        client: vm.client.clone(),
        container_id: id.to_owned(),
        exec_id: String::new(),
    };
    let ExecStreams {
        stdin,
        stdout,
        stderr,
        mut resize,
    } = streams;
    // With a terminal, everything is on stdout.
    let stderr = if tty { None } else { stderr };

    // The client's first size before its input, so what it types runs in a
    // terminal of its size.
    let mut resize = resize.take().filter(|_| tty);
    if let Some(rx) = resize.as_mut() {
        if let Ok(Some(size)) = tokio::time::timeout(FIRST_SIZE_WAIT, rx.recv()).await {
            if let Err(s) = p.resize(size).await {
                tracing::debug!(container = %id, "ResizeTty: {s}");
            }
        }
    }
    let output = relay_output(id, rx, done, stdout, stderr);
    // Ends the session when the client's stdin ends and it only detaches.
    let input = async {
        let stdin_relay = async {
            let Some(s) = stdin.filter(|_| has_stdin) else {
                return std::future::pending::<()>().await;
            };
            if let Err(e) = copy_stdin(&p, s).await {
                tracing::debug!(container = %id, "attach stdin: {e}");
            }
            if stdin_once && !tty {
                if let Err(e) = p.close_stdin().await {
                    tracing::debug!(container = %id, "CloseStdin: {e}");
                }
                // The process sees EOF; the session ends with its output.
                std::future::pending::<()>().await
            }
        };
        let resizes = async {
            if let Some(rx) = resize.as_mut() {
                relay_resize(&p, rx).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = stdin_relay => {},
            () = resizes => {},
        }
    };
    tokio::select! {
        () = output => {},
        () = input => tracing::debug!(container = %id, "attach client closed stdin: detached"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::logs::output_tap;

    fn chunk(stderr: bool, s: &str) -> Chunk {
        Chunk {
            stderr,
            data: s.as_bytes().into(),
        }
    }

    #[tokio::test]
    async fn output_goes_to_its_stream_until_the_copy_ends() {
        let tap = output_tap();
        let done = watch::Sender::new(false);
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let (err_w, mut err_r) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn({
            let (rx, done) = (tap.subscribe(), done.subscribe());
            async move { relay_output("c", rx, done, Some(out_w), Some(err_w)).await }
        });
        tap.send(chunk(false, "one ")).unwrap();
        tap.send(chunk(true, "err")).unwrap();
        tap.send(chunk(false, "two")).unwrap();
        // The copy's last chunk and its end arrive together: the chunk still goes.
        tap.send(chunk(false, " three")).unwrap();
        done.send_replace(true);
        relay.await.unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        out_r.read_to_string(&mut out).await.unwrap();
        err_r.read_to_string(&mut err).await.unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("one two three", "err"));
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_loses_output_not_the_session() {
        let tap = output_tap();
        let done = watch::Sender::new(false);
        let rx = tap.subscribe();
        // More than the backlog before the session reads anything.
        for i in 0..200 {
            tap.send(chunk(false, &format!("{i} "))).unwrap();
        }
        tap.send(chunk(false, "last")).unwrap();
        done.send_replace(true);
        let (out_w, mut out_r) = tokio::io::duplex(1 << 20);
        relay_output::<tokio::io::DuplexStream>("c", rx, done.subscribe(), Some(out_w), None).await;
        let mut out = String::new();
        out_r.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with("199 last") && !out.starts_with("0 "), "{out}");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_does_not_stop_the_other_stream() {
        let tap = output_tap();
        let done = watch::Sender::new(false);
        let (out_w, out_r) = tokio::io::duplex(16);
        drop(out_r);
        let (err_w, mut err_r) = tokio::io::duplex(1 << 16);
        let rx = tap.subscribe();
        tap.send(chunk(false, "nobody reads this")).unwrap();
        tap.send(chunk(true, "still sent")).unwrap();
        done.send_replace(true);
        relay_output("c", rx, done.subscribe(), Some(out_w), Some(err_w)).await;
        let mut err = String::new();
        err_r.read_to_string(&mut err).await.unwrap();
        assert_eq!(err, "still sent");
    }
}
