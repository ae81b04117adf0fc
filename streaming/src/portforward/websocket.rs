//! Port-forward over the WebSocket channel protocol (clients other than kubectl and
//! crictl): the ports are the CRI request's; port i has a data channel 2i and an
//! error channel 2i+1, each opened by the server with the port as a little-endian
//! u16. Each port carries one connection; the session ends when all have ended.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{duplex, AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::PollSender;
use tracing::debug;

use super::PIPE;
use crate::backend::{PortStream, StreamBackend};
use crate::remotecommand::websocket::{message, payload, ChannelWriter, Encoding};

/// Subprotocols offered in `Sec-WebSocket-Protocol` (none at all means binary).
pub const PROTOCOLS: &[(&str, Encoding)] = &[
    ("v4.channel.k8s.io", Encoding::Binary),
    ("v4.base64.channel.k8s.io", Encoding::Base64),
];
/// How long the end of a session waits for the last messages to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves the ports until every forward has ended or the client goes away.
pub async fn serve<B, S>(
    ws: WebSocketStream<S>,
    enc: Encoding,
    pod: String,
    ports: Vec<u16>,
    backend: Arc<B>,
) where
    B: StreamBackend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let mut io = JoinSet::new();
    let writer = io.spawn(async move {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut inbound: Vec<Option<WriteHalf<DuplexStream>>> = Vec::new();
    let mut forwards = JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = tx.send(message(enc, ch, &port.to_le_bytes())).await;
        }
        let (ours, theirs) = duplex(PIPE);
        let (mut from_backend, to_backend) = tokio::io::split(ours);
        inbound.push(Some(to_backend));
        let mut to_client = ChannelWriter {
            ch: data_ch,
            enc,
            tx: PollSender::new(tx.clone()),
        };
        let errors = tx.clone();
        let (backend, pod) = (backend.clone(), pod.clone());
        forwards.spawn(async move {
            let down = async {
                let _ = tokio::io::copy(&mut from_backend, &mut to_client).await;
            };
            let fwd = backend.port_forward(pod.clone(), port, PortStream(theirs));
            let (result, ()) = tokio::join!(fwd, down);
            if let Err(e) = result {
                debug!(port, error = %e, "port-forward failed");
                let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                let _ = errors.send(message(enc, err_ch, msg.as_bytes())).await;
            }
        });
    }
    let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
    io.spawn(async move {
        let _gone = gone_tx;
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
            let Some((ch, data)) = payload(enc, m) else {
                continue;
            };
            // Only data channels carry bytes from the client.
            let Some(slot) = inbound.get_mut(usize::from(ch / 2)).filter(|_| ch % 2 == 0) else {
                continue;
            };
            if let Some(w) = slot {
                if w.write_all(&data).await.is_err() {
                    *slot = None;
                }
            }
        }
        // Dropping the pipes gives every backend EOF.
    });
    tokio::select! {
        () = async { while forwards.join_next().await.is_some() {} } => {}
        _ = gone => debug!("client went away during port-forward"),
    }
    drop(forwards);
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(tx);
    let wait = async {
        while let Some(done) = io.join_next_with_id().await {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            if id == writer.id() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, wait).await;
}
