//! Exec and attach over WebSocket: every message is one channel byte (0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize) and its payload; the base64 variants send
//! text messages with an ASCII digit and base64. v5 adds the close signal
//! `[255, channel]`, with which the client ends its stdin.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{duplex, AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::PollSender;
use tracing::debug;

use super::{run, Target, Transport, Version, PIPE};
use crate::backend::StreamBackend;
use crate::status::{status_json, status_text};

/// How channel payloads are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary messages.
    Binary,
    /// Text messages, base64 payload.
    Base64,
}

/// Subprotocols offered in `Sec-WebSocket-Protocol`, best first.
pub const PROTOCOLS: &[(&str, Version, Encoding)] = &[
    ("v5.channel.k8s.io", Version::V5, Encoding::Binary),
    ("v4.channel.k8s.io", Version::V4, Encoding::Binary),
    ("v4.base64.channel.k8s.io", Version::V4, Encoding::Base64),
    ("channel.k8s.io", Version::V1, Encoding::Binary),
    ("base64.channel.k8s.io", Version::V1, Encoding::Base64),
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE_SIGNAL: u8 = 255;
/// Largest payload per message sent.
const MAX_CHUNK: usize = 32 << 10;
/// How long the end of a session waits for the last messages to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One channel message.
pub fn message(enc: Encoding, ch: u8, data: &[u8]) -> Message {
    match enc {
        Encoding::Binary => {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(ch);
            v.extend_from_slice(data);
            Message::Binary(v.into())
        }
        Encoding::Base64 => {
            let mut s = String::with_capacity(data.len() * 4 / 3 + 5);
            s.push(char::from(b'0' + ch));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        }
    }
}

/// A channel's payload, or `None` for a message that carries none.
pub fn payload(enc: Encoding, m: Message) -> Option<(u8, Vec<u8>)> {
    match (enc, m) {
        (Encoding::Binary, Message::Binary(b)) => {
            let (&ch, rest) = b.split_first()?;
            Some((ch, rest.to_vec()))
        }
        (Encoding::Base64, Message::Text(t)) => {
            let (&ch, rest) = t.as_bytes().split_first()?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((ch.checked_sub(b'0')?, data))
        }
        _ => None,
    }
}

/// Writes a channel as messages for the writer task.
pub struct ChannelWriter {
    /// The channel.
    pub ch: u8,
    /// How payloads are carried.
    pub enc: Encoding,
    /// To the writer task.
    pub tx: PollSender<Message>,
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed");
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let n = buf.len().min(MAX_CHUNK);
        let m = message(self.enc, self.ch, &buf[..n]);
        self.tx.send_item(m).map_err(|_| gone())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The protocol has no per-channel end from the server; the session's close is it.
        Poll::Ready(Ok(()))
    }
}

/// Serves one session on an upgraded WebSocket, then closes it with code 1000.
pub async fn serve<B, S>(
    ws: WebSocketStream<S>,
    version: Version,
    enc: Encoding,
    target: Target,
    backend: &B,
) where
    B: StreamBackend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tty, stdin, stdout, stderr) = target.flags();
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let mut tasks = JoinSet::new();
    let writer = tasks.spawn(async move {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let pipe = |on: bool| on.then(|| duplex(PIPE));
    let stdin_pipe = pipe(stdin);
    let resize_pipe = pipe(tty);
    let (stdin_in, stdin_out) = split_pipe(stdin_pipe);
    let (resize_in, resize_out) = split_pipe(resize_pipe);
    let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
    tasks.spawn(async move {
        let _gone = gone_tx;
        let (mut stdin_in, mut resize_in) = (stdin_in, resize_in);
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
            let Some((ch, data)) = payload(enc, m) else {
                continue;
            };
            let target = match ch {
                STDIN => &mut stdin_in,
                RESIZE => &mut resize_in,
                CLOSE_SIGNAL if version >= Version::V5 => {
                    if data.first() == Some(&STDIN) {
                        if let Some(mut s) = stdin_in.take() {
                            let _ = s.shutdown().await;
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(w) = target {
                if w.write_all(&data).await.is_err() {
                    *target = None;
                }
            }
        }
        // The client is gone: stdin and resize end here.
    });
    let writer_for = |ch: u8, on: bool| -> Option<Box<dyn AsyncWrite + Send + Unpin>> {
        on.then(|| {
            Box::new(ChannelWriter {
                ch,
                enc,
                tx: PollSender::new(tx.clone()),
            }) as _
        })
    };
    let t = Transport {
        stdin: stdin_out.map(|r| Box::new(r) as _),
        stdout: writer_for(STDOUT, stdout),
        stderr: writer_for(STDERR, stderr),
        resize: resize_out.map(|r| Box::new(r) as _),
    };
    // An empty message on the first output channel tells the client the session is up.
    let first = if stdout {
        STDOUT
    } else if stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(message(enc, first, &[])).await;
    // The reader ends when the client goes away, which ends the session and drops
    // the backend's future.
    let outcome = tokio::select! {
        o = run(backend, target, t) => o,
        _ = gone => {
            debug!("client went away during the session");
            return;
        }
    };
    let body = if version >= Version::V4 {
        Some(status_json(&outcome))
    } else {
        status_text(&outcome)
    };
    if let Some(body) = body {
        let _ = tx.send(message(enc, ERROR, &body)).await;
    }
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(tx);
    // Wait for the writer only; dropping the set ends the reader.
    let wait = async {
        while let Some(done) = tasks.join_next_with_id().await {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            if id == writer.id() {
                return;
            }
        }
    };
    if tokio::time::timeout(CLOSE_GRACE, wait).await.is_err() {
        debug!("websocket close timed out");
    }
}

fn split_pipe(
    p: Option<(DuplexStream, DuplexStream)>,
) -> (Option<DuplexStream>, Option<DuplexStream>) {
    match p {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    }
}
