//! A minimal SPDY client for tests: opens streams, sends data, and reads the
//! server's frames with their header blocks decompressed in order.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::frame::{self, Frame, FLAG_FIN};
use super::headers::{Compressor, Decompressor, Headers};

pub struct Client {
    wr: WriteHalf<DuplexStream>,
    comp: Compressor,
    next_id: u32,
    frames: mpsc::UnboundedReceiver<Frame>,
}

async fn read_frames(mut rd: ReadHalf<DuplexStream>, tx: mpsc::UnboundedSender<Frame>) {
    let mut buf = BytesMut::new();
    let mut dec = Decompressor::default();
    loop {
        while let Some(f) = frame::decode(&mut buf).unwrap() {
            if let Frame::SynReply { headers, .. } = &f {
                dec.decompress(headers).unwrap();
            }
            if tx.send(f).is_err() {
                return;
            }
        }
        if rd.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
}

impl Client {
    pub fn new(io: DuplexStream) -> Self {
        let (rd, wr) = tokio::io::split(io);
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(read_frames(rd, tx));
        Self {
            wr,
            comp: Compressor::new().unwrap(),
            next_id: 1,
            frames,
        }
    }

    async fn send(&mut self, f: Frame) {
        let mut out = BytesMut::new();
        f.encode(&mut out);
        self.wr.write_all(&out).await.unwrap();
    }

    /// Opens a stream with these headers; returns its id.
    pub async fn open(&mut self, pairs: &[(&str, &str)]) -> u32 {
        let mut h = Headers::default();
        for (n, v) in pairs {
            h.push(n, v);
        }
        let id = self.next_id;
        self.next_id += 2;
        let headers = Bytes::from(self.comp.compress(&h).unwrap());
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers,
        })
        .await;
        id
    }

    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            flags: if fin { FLAG_FIN } else { 0 },
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    pub async fn raw(&mut self, f: Frame) {
        self.send(f).await;
    }

    /// The next frame from the server, failing the test after 10 s.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.frames.recv())
            .await
            .expect("no frame from the server within 10 s")
    }
}
