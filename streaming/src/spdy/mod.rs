//! SPDY/3.1, the server side of the subset Kubernetes clients speak.

pub mod conn;
pub mod dictionary;
pub mod frame;
pub mod headers;
#[cfg(test)]
pub mod testclient;

pub use conn::{Connection, SendHalf, Stream};

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::frame::{self, Frame, FLAG_FIN};
    use super::headers::Decompressor;
    use super::Connection;

    /// What kubectl 1.32 sent for `kubectl exec -i p -- sh -c cat` with stdin "hi\n"
    /// (recorded behind the test proxy).
    const KUBECTL_EXEC: &[u8] = include_bytes!("testdata/kubectl-exec-stdin.bin");

    #[test]
    fn decodes_recorded_go_client_frames() {
        // Go's zlib names the SPDY dictionary by its Adler-32 in the stream header.
        assert_eq!(&KUBECTL_EXEC[20..24], &[0xe3, 0xc6, 0xa7, 0xc2]);
        let mut buf = BytesMut::from(KUBECTL_EXEC);
        let mut dec = Decompressor::default();
        let mut streams = Vec::new();
        let mut rest = Vec::new();
        while let Some(f) = frame::decode(&mut buf).unwrap() {
            match f {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    let h = dec.decompress(&headers).unwrap();
                    streams.push((stream_id, h.get("streamType").unwrap().to_owned()));
                }
                other => rest.push(other),
            }
        }
        assert!(buf.is_empty());
        let want: Vec<(u32, String)> = [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")]
            .iter()
            .map(|(i, s)| (*i, s.to_string()))
            .collect();
        assert_eq!(streams, want);
        assert!(rest.contains(&Frame::Data {
            stream_id: 3,
            flags: 0,
            data: bytes::Bytes::from_static(b"hi\n"),
        }));
        assert!(rest.iter().any(|f| matches!(f, Frame::GoAway { .. })));
    }

    #[tokio::test]
    async fn serves_recorded_go_client_frames() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::start(server, std::time::Duration::from_secs(60));
        // Everything up to the client's final RST and GOAWAY.
        client.write_all(&KUBECTL_EXEC[..0xa1]).await.unwrap();
        let mut kinds = Vec::new();
        let mut stdin = None;
        for _ in 0..4 {
            let s = conn.accept().await.unwrap();
            let kind = s.headers().get("streamtype").unwrap().to_owned();
            let (r, _w) = s.split();
            if kind == "stdin" {
                stdin = Some(r);
            }
            kinds.push(kind);
        }
        assert_eq!(kinds, ["error", "stdin", "stdout", "stderr"]);
        let mut got = Vec::new();
        stdin.unwrap().read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi\n");
        // Our four SYN_REPLYs decompress with a fresh zlib stream and the dictionary.
        let mut buf = BytesMut::new();
        let mut dec = Decompressor::default();
        let mut replies = 0;
        while replies < 4 {
            client.read_buf(&mut buf).await.unwrap();
            while let Some(f) = frame::decode(&mut buf).unwrap() {
                if let Frame::SynReply { headers, flags, .. } = f {
                    assert_eq!(flags & FLAG_FIN, 0);
                    dec.decompress(&headers).unwrap();
                    replies += 1;
                }
            }
        }
        conn.close().await;
    }

    #[tokio::test]
    async fn pings_ids_and_idle_timeout() {
        use super::testclient::Client;
        let (server, client) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::start(server, std::time::Duration::from_millis(300));
        let mut c = Client::new(client);
        // Client pings (odd ids) are echoed; even ids would be answers to ours.
        c.raw(Frame::Ping { id: 2 }).await;
        c.raw(Frame::Ping { id: 1 }).await;
        assert_eq!(c.next().await, Some(Frame::Ping { id: 1 }));
        // Flow control frames are ignored, not errors.
        c.raw(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1,
        })
        .await;
        c.raw(Frame::Settings).await;
        // An even stream id is refused; ids must grow.
        c.raw(Frame::SynStream {
            stream_id: 2,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: bytes::Bytes::from(
                super::headers::Compressor::new()
                    .unwrap()
                    .compress(&super::headers::Headers::default())
                    .unwrap(),
            ),
        })
        .await;
        assert_eq!(
            c.next().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: frame::RST_PROTOCOL_ERROR
            })
        );
        // Quiet for longer than the idle timeout: the connection ends.
        let t = std::time::Instant::now();
        assert!(conn.accept().await.is_none());
        assert!(t.elapsed() >= std::time::Duration::from_millis(250));
    }

    #[tokio::test]
    async fn unread_data_is_bounded_per_connection() {
        use super::testclient::Client;
        let (server, client) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::start(server, std::time::Duration::from_secs(60));
        let mut c = Client::new(client);
        // Each stream stays under its own queue of 16 frames; together they pass the
        // connection's budget.
        let (streams, frames, chunk) = (40, 15, 32usize << 10);
        assert!(streams * frames * chunk > super::conn::RECV_BUDGET);
        let mut ids = Vec::new();
        let mut unread = Vec::new();
        for _ in 0..streams {
            ids.push(c.open(&[("streamType", "data")]).await);
            unread.push(conn.accept().await.unwrap().split());
        }
        let sender = tokio::spawn(async move {
            let data = vec![7u8; chunk];
            for _ in 0..frames {
                for id in &ids {
                    c.data(*id, &data, false).await;
                }
            }
            c.raw(Frame::Ping { id: 1 }).await;
            c
        });
        // Past the budget the server stops reading: the sender is stuck.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!sender.is_finished());
        // Reading them all (at once: the sender goes round the streams) lets it finish.
        let readers: Vec<_> = unread
            .into_iter()
            .map(|(mut r, w)| {
                tokio::spawn(async move {
                    let mut got = vec![0u8; frames * chunk];
                    r.read_exact(&mut got).await.unwrap();
                    drop(w);
                })
            })
            .collect();
        for r in readers {
            r.await.unwrap();
        }
        let mut c = sender.await.unwrap();
        loop {
            match c.next().await {
                Some(Frame::Ping { id: 1 }) => break,
                Some(_) => {}
                None => panic!("connection closed"),
            }
        }
    }
}
