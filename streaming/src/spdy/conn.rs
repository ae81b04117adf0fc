//! The server side of a SPDY/3.1 connection: a reader task that turns frames into
//! streams and a writer task that owns the socket's write half and the compressor.
//!
//! Written here rather than taken from a crate: no maintained Rust SPDY/3.1 crate
//! exists (the only tokio port is a young 0.1 release), and Kubernetes needs a small,
//! server-only subset that is easier to audit in place.
//!
//! Like the Go peer (moby/spdystream), there is no SPDY flow control: WINDOW_UPDATE
//! and SETTINGS are ignored and backpressure is TCP's, since Go never sends a window
//! update and a strict 64 KiB window would stall.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;
use tracing::{debug, warn};

use super::frame::{self, Frame, FLAG_FIN, MAX_SEND_DATA, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM};
use super::headers::{Compressor, Decompressor, Headers};

/// Most streams open at once on one connection.
pub const MAX_STREAMS: usize = 512;
/// Frames queued per stream before the reader waits for the stream's consumer.
const STREAM_QUEUE: usize = 16;
/// Bytes received and not yet consumed, over all streams of a connection: past it
/// the reader waits, so a client cannot pile up data in streams nobody reads.
pub(crate) const RECV_BUDGET: usize = 8 << 20;
/// Frames queued for the writer.
const WRITE_QUEUE: usize = 64;
/// How long `close` waits for the final frames to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

enum Command {
    Reply(u32),
    Data { id: u32, data: Bytes, fin: bool },
    Reset { id: u32, status: u32 },
    Ping(u32),
    Close(oneshot::Sender<()>),
}

#[derive(Default)]
struct StreamState {
    /// The peer reset the stream: writes fail.
    reset: AtomicBool,
}

/// A stream the peer opened, already answered with SYN_REPLY.
pub struct Stream {
    id: u32,
    headers: Headers,
    recv: RecvHalf,
    send: SendHalf,
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of its SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Separates the directions.
    pub fn split(self) -> (RecvHalf, SendHalf) {
        (self.recv, self.send)
    }
}

/// What the peer sends on a stream; EOF at its FIN or reset.
pub struct RecvHalf {
    rx: mpsc::Receiver<Queued>,
    buf: Bytes,
    /// The budget `buf` holds, returned once it is consumed.
    permit: Option<OwnedSemaphorePermit>,
}

/// Received bytes with their share of the connection's budget.
type Queued = (Bytes, OwnedSemaphorePermit);

impl AsyncRead for RecvHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.buf.is_empty() {
            self.permit = None;
            match ready!(self.rx.poll_recv(cx)) {
                Some((b, p)) => {
                    self.buf = b;
                    self.permit = Some(p);
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf.split_to(n));
        if self.buf.is_empty() {
            self.permit = None;
        }
        Poll::Ready(Ok(()))
    }
}

/// The sending direction of a stream: `shutdown` sends FIN, [`SendHalf::reset`] RST.
pub struct SendHalf {
    id: u32,
    state: Arc<StreamState>,
    tx: PollSender<Command>,
    raw: mpsc::Sender<Command>,
    finished: bool,
}

impl SendHalf {
    /// Aborts the stream in both directions (RST_STREAM CANCEL).
    pub async fn reset(&mut self) {
        self.finished = true;
        let _ = self
            .raw
            .send(Command::Reset {
                id: self.id,
                status: frame::RST_CANCEL,
            })
            .await;
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY stream closed")
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.finished || self.state.reset.load(Ordering::Relaxed) {
            return Poll::Ready(Err(gone()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let n = buf.len().min(MAX_SEND_DATA);
        let id = self.id;
        self.tx
            .send_item(Command::Data {
                id,
                data: Bytes::copy_from_slice(&buf[..n]),
                fin: false,
            })
            .map_err(|_| gone())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task writes and flushes whatever it dequeues.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let id = self.id;
        self.tx
            .send_item(Command::Data {
                id,
                data: Bytes::new(),
                fin: true,
            })
            .map_err(|_| gone())?;
        self.finished = true;
        Poll::Ready(Ok(()))
    }
}

/// A server-side connection over an upgraded byte stream.
pub struct Connection {
    incoming: mpsc::Receiver<Stream>,
    cmd: mpsc::Sender<Command>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Connection {
    /// Starts serving `io`. The connection ends when the peer goes quiet for
    /// `idle_timeout`, sends GOAWAY, or closes the socket.
    pub fn start<IO>(io: IO, idle_timeout: Duration) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (cmd, cmd_rx) = mpsc::channel(WRITE_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(16);
        let last_id = Arc::new(AtomicU32::new(0));
        let reader = tokio::spawn(read_loop(
            rd,
            cmd.clone(),
            incoming_tx,
            idle_timeout,
            last_id.clone(),
        ));
        let writer = tokio::spawn(write_loop(wr, cmd_rx, last_id));
        Self {
            incoming,
            cmd,
            reader,
            writer,
        }
    }

    /// The next stream the peer opens; `None` once the peer is gone.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Ends the connection the way the Go server does: resets every stream, sends
    /// GOAWAY and closes the socket. Queued data is written first.
    pub async fn close(self) {
        let (done, wait) = oneshot::channel();
        if self.cmd.send(Command::Close(done)).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_GRACE, wait).await;
        }
        // Drop aborts both tasks.
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

struct Open {
    tx: Option<mpsc::Sender<Queued>>,
    state: Arc<StreamState>,
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    cmd: mpsc::Sender<Command>,
    incoming: mpsc::Sender<Stream>,
    idle: Duration,
    last_id: Arc<AtomicU32>,
) {
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut dec = Decompressor::default();
    let mut streams: HashMap<u32, Open> = HashMap::new();
    let budget = Arc::new(Semaphore::new(RECV_BUDGET));
    loop {
        let frame = match frame::decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => {
                    debug!(error = %e, "SPDY read failed");
                    return;
                }
                Err(_) => {
                    debug!("SPDY connection idle, closing");
                    return;
                }
            },
            Err(e) => {
                warn!(error = %e, "bad SPDY frame, closing the connection");
                return;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                headers,
                flags,
                ..
            } => {
                // The zlib context is shared: decompress even a stream refused below.
                let headers = match dec.decompress(&headers) {
                    Ok(h) => h,
                    Err(e) => {
                        warn!(error = %e, "bad SPDY header block, closing the connection");
                        return;
                    }
                };
                let last = last_id.load(Ordering::Relaxed);
                if stream_id % 2 == 0 || stream_id <= last {
                    reset(&cmd, stream_id, RST_PROTOCOL_ERROR).await;
                    continue;
                }
                last_id.store(stream_id, Ordering::Relaxed);
                if streams.len() >= MAX_STREAMS {
                    streams.retain(|_, o| o.tx.as_ref().is_some_and(|t| !t.is_closed()));
                }
                if streams.len() >= MAX_STREAMS {
                    reset(&cmd, stream_id, RST_REFUSED_STREAM).await;
                    continue;
                }
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                let state = Arc::new(StreamState::default());
                streams.insert(
                    stream_id,
                    Open {
                        // A SYN_STREAM with FIN carries no data: EOF at once.
                        tx: (flags & FLAG_FIN == 0).then_some(tx),
                        state: state.clone(),
                    },
                );
                // Reply at once: the Go client waits for it before opening the next.
                if cmd.send(Command::Reply(stream_id)).await.is_err() {
                    return;
                }
                let stream = Stream {
                    id: stream_id,
                    headers,
                    recv: RecvHalf {
                        rx,
                        buf: Bytes::new(),
                        permit: None,
                    },
                    send: SendHalf {
                        id: stream_id,
                        state,
                        tx: PollSender::new(cmd.clone()),
                        raw: cmd.clone(),
                        finished: false,
                    },
                };
                if incoming.send(stream).await.is_err() {
                    // Nobody accepts any more; the session is ending.
                    debug!(
                        stream_id,
                        "stream opened after the session stopped accepting"
                    );
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let Some(open) = streams.get_mut(&stream_id) else {
                    continue;
                };
                if !data.is_empty() {
                    if let Some(tx) = &open.tx {
                        // Frames are at most MAX_DATA_LEN, well under the budget.
                        let Ok(permit) = budget.clone().acquire_many_owned(data.len() as u32).await
                        else {
                            return;
                        };
                        if tx.send((data, permit)).await.is_err() {
                            // The consumer stopped reading: drop what follows.
                            open.tx = None;
                        }
                    }
                }
                if flags & FLAG_FIN != 0 {
                    open.tx = None;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(open) = streams.remove(&stream_id) {
                    open.state.reset.store(true, Ordering::Relaxed);
                }
            }
            Frame::Headers { headers, .. } | Frame::SynReply { headers, .. } => {
                if let Err(e) = dec.decompress(&headers) {
                    warn!(error = %e, "bad SPDY header block, closing the connection");
                    return;
                }
            }
            Frame::Ping { id } => {
                // Echo the peer's pings (odd ids from a client); ours would be even.
                if id % 2 == 1 && cmd.send(Command::Ping(id)).await.is_err() {
                    return;
                }
            }
            Frame::GoAway { .. } => return,
            Frame::Settings | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
    }
}

async fn reset(cmd: &mpsc::Sender<Command>, id: u32, status: u32) {
    let _ = cmd.send(Command::Reset { id, status }).await;
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Command>,
    last_id: Arc<AtomicU32>,
) {
    let mut comp = match Compressor::new() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot set up SPDY header compression");
            return;
        }
    };
    let mut open: HashSet<u32> = HashSet::new();
    let mut out = BytesMut::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = None;
        while let Some(c) = next.take() {
            match c {
                Command::Reply(id) => match comp.compress(&Headers::default()) {
                    Ok(h) => {
                        open.insert(id);
                        Frame::SynReply {
                            stream_id: id,
                            flags: 0,
                            headers: h.into(),
                        }
                        .encode(&mut out);
                    }
                    Err(e) => {
                        warn!(error = %e, "SPDY header compression failed");
                        return;
                    }
                },
                Command::Data { id, data, fin } => {
                    if open.contains(&id) {
                        let flags = if fin { FLAG_FIN } else { 0 };
                        Frame::Data {
                            stream_id: id,
                            flags,
                            data,
                        }
                        .encode(&mut out);
                    }
                }
                Command::Reset { id, status } => {
                    open.remove(&id);
                    Frame::RstStream {
                        stream_id: id,
                        status,
                    }
                    .encode(&mut out);
                }
                Command::Ping(id) => Frame::Ping { id }.encode(&mut out),
                Command::Close(done) => {
                    let mut ids: Vec<u32> = open.drain().collect();
                    ids.sort_unstable();
                    for id in ids {
                        Frame::RstStream {
                            stream_id: id,
                            status: frame::RST_CANCEL,
                        }
                        .encode(&mut out);
                    }
                    Frame::GoAway {
                        last_good_stream_id: last_id.load(Ordering::Relaxed),
                        status: 0,
                    }
                    .encode(&mut out);
                    close = Some(done);
                    break;
                }
            }
            if out.len() < 64 << 10 {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = write_out(&mut wr, &out).await {
            debug!(error = %e, "SPDY write failed");
            return;
        }
        out.clear();
        if let Some(done) = close {
            let _ = wr.shutdown().await;
            let _ = done.send(());
            return;
        }
    }
}

async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, out: &[u8]) -> io::Result<()> {
    wr.write_all(out).await?;
    wr.flush().await
}
