//! WebSocket plumbing shared by the sessions: the handshake answer and a byte-stream
//! view of binary messages (for SPDY tunnelled in WebSocket).

use futures_util::{SinkExt, StreamExt};
use tokio::io::{duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Limits for server-side WebSockets.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A byte stream whose reads are the payloads of the client's binary messages and
/// whose writes become binary messages. The copying tasks live in `tasks`.
pub fn tunnel<S>(ws: WebSocketStream<S>, tasks: &mut JoinSet<()>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = duplex(64 << 10);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut stream) = ws.split();
    tasks.spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
            if let Message::Binary(b) = m {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        }
        let _ = wr.shutdown().await;
    });
    tasks.spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    theirs
}
