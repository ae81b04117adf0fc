//! Port-forward over SPDY (`portforward.k8s.io`): the client opens an `error` and a
//! `data` stream per local connection, paired by their `requestid` header, and many
//! pairs share one connection. A failing pair reports on its own error stream and
//! leaves the others alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{duplex, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::debug;

use crate::backend::{PortStream, StreamBackend};
use crate::spdy::{Connection, Stream};

use super::PIPE;

/// The subprotocol.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The same, tunnelled in WebSocket binary messages.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Most half-open pairs at once.
const MAX_PENDING_PAIRS: usize = 256;

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    since: Option<Instant>,
}

/// The pair key: `requestid`, or for old clients one derived from the stream ids
/// (the data stream follows its error stream).
fn key(s: &Stream, kind: &str) -> String {
    match s.headers().get("requestid") {
        Some(id) => id.to_owned(),
        None if kind == "data" => format!("stream-{}", s.id().saturating_sub(2)),
        None => format!("stream-{}", s.id()),
    }
}

/// Serves port-forward pairs until the client goes away, then closes the connection.
pub async fn serve<B: StreamBackend>(
    mut conn: Connection,
    pod: String,
    backend: Arc<B>,
    creation_timeout: Duration,
) {
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(creation_timeout));
    loop {
        let s = tokio::select! {
            s = conn.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = tick.tick() => {
                expire(&mut pending, creation_timeout).await;
                continue;
            }
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        let kind = s.headers().get("streamtype").unwrap_or_default().to_owned();
        let port = s.headers().get("port").and_then(|p| p.parse::<u16>().ok());
        let (Some(port), "data" | "error") = (port.filter(|p| *p != 0), kind.as_str()) else {
            debug!(streamtype = %kind, "refusing a port-forward stream without a valid port and type");
            s.split().1.reset().await;
            continue;
        };
        let k = key(&s, &kind);
        if !pending.contains_key(&k) && pending.len() >= MAX_PENDING_PAIRS {
            s.split().1.reset().await;
            continue;
        }
        let pair = pending.entry(k.clone()).or_default();
        pair.since.get_or_insert_with(Instant::now);
        let slot = if kind == "data" {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            debug!(request = %k, "duplicate port-forward stream");
            s.split().1.reset().await;
            continue;
        }
        *slot = Some(s);
        if pair.data.is_some() && pair.error.is_some() {
            if let Some(Pair {
                data: Some(data),
                error: Some(error),
                ..
            }) = pending.remove(&k)
            {
                let backend = backend.clone();
                let pod = pod.clone();
                running.spawn(forward(backend, pod, port, data, error));
            }
        }
    }
    drop(running);
    conn.close().await;
}

async fn expire(pending: &mut HashMap<String, Pair>, timeout: Duration) {
    let stale: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.since.is_some_and(|t| t.elapsed() >= timeout))
        .map(|(k, _)| k.clone())
        .collect();
    for k in stale {
        let Some(p) = pending.remove(&k) else {
            continue;
        };
        debug!(request = %k, "port-forward pair incomplete, dropping it");
        if let Some(e) = p.error {
            let mut w = e.split().1;
            let msg = format!("timed out waiting for the other stream of request {k}");
            let _ = w.write_all(msg.as_bytes()).await;
            let _ = w.shutdown().await;
        }
        if let Some(d) = p.data {
            d.split().1.reset().await;
        }
    }
}

/// Runs one pair: bytes between the data stream and the backend; on failure a
/// message on the error stream. Both streams are finished at the end, which the
/// client waits for.
async fn forward<B: StreamBackend>(
    backend: Arc<B>,
    pod: String,
    port: u16,
    data: Stream,
    error: Stream,
) {
    let (mut from_client, mut to_client) = data.split();
    let (_, mut err) = error.split();
    let (ours, theirs) = duplex(PIPE);
    let (mut ours_r, mut ours_w) = tokio::io::split(ours);
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut ours_w).await;
        let _ = ours_w.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut ours_r, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    let fwd = backend.port_forward(pod.clone(), port, PortStream(theirs));
    // The backend's end closes when it returns, which ends `down`; `up` may wait on
    // a client that sends nothing and is dropped then.
    let run = async {
        tokio::pin!(fwd, up);
        tokio::select! {
            r = &mut fwd => r,
            () = &mut up => fwd.await,
        }
    };
    let (result, ()) = tokio::join!(run, down);
    if let Err(e) = result {
        debug!(port, error = %e, "port-forward failed");
        let msg = format!("error forwarding port {port} to pod {pod}: {e}");
        let _ = err.write_all(msg.as_bytes()).await;
    }
    let _ = err.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::backend::{BackendError, ExecStreams, ExitStatus};
    use crate::request::{AttachRequest, ExecRequest};
    use crate::spdy::frame::{Frame, FLAG_FIN};
    use crate::spdy::testclient::Client;

    /// Port 1 refuses; any other port echoes.
    struct Echo;

    impl StreamBackend for Echo {
        async fn exec(&self, _: ExecRequest, _: ExecStreams) -> Result<ExitStatus, BackendError> {
            Err(BackendError::Failed("no exec".into()))
        }

        async fn attach(&self, _: AttachRequest, _: ExecStreams) -> Result<(), BackendError> {
            Err(BackendError::Failed("no attach".into()))
        }

        async fn port_forward(
            &self,
            _: String,
            port: u16,
            s: PortStream,
        ) -> Result<(), BackendError> {
            if port == 1 {
                return Err(BackendError::Failed("connection refused".into()));
            }
            let (mut r, mut w) = tokio::io::split(s);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            Ok(())
        }
    }

    fn start(timeout: Duration) -> (Client, tokio::task::JoinHandle<()>) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let conn = Connection::start(server, Duration::from_secs(60));
        let task = tokio::spawn(serve(conn, "pod".into(), Arc::new(Echo), timeout));
        (Client::new(client), task)
    }

    fn stream(
        kind: &'static str,
        port: &'static str,
        id: &'static str,
    ) -> [(&'static str, &'static str); 3] {
        [("streamType", kind), ("port", port), ("requestID", id)]
    }

    /// Data per stream until its FIN, as the client sees it; RSTs apart.
    #[derive(Default)]
    struct Seen {
        data: HashMap<u32, Vec<u8>>,
        fin: Vec<u32>,
        rst: Vec<u32>,
    }

    impl Seen {
        async fn until(&mut self, c: &mut Client, done: impl Fn(&Seen) -> bool) {
            while !done(self) {
                match c.next().await.expect("server closed the connection") {
                    Frame::Data {
                        stream_id,
                        flags,
                        data,
                    } => {
                        self.data
                            .entry(stream_id)
                            .or_default()
                            .extend_from_slice(&data);
                        if flags & FLAG_FIN != 0 {
                            self.fin.push(stream_id);
                        }
                    }
                    Frame::RstStream { stream_id, .. } => self.rst.push(stream_id),
                    _ => {}
                }
            }
        }
    }

    #[tokio::test]
    async fn pairs_by_request_id_and_isolates_a_failing_pair() {
        let (mut c, _task) = start(Duration::from_secs(30));
        // Interleaved: error 0, error 1, data 1, data 0.
        let err0 = c.open(&stream("error", "80", "0")).await;
        let err1 = c.open(&stream("error", "1", "1")).await;
        let data1 = c.open(&stream("data", "1", "1")).await;
        let data0 = c.open(&stream("data", "80", "0")).await;
        // The client never writes on error streams and half-closes them at once.
        c.data(err0, b"", true).await;
        c.data(err1, b"", true).await;
        let mut seen = Seen::default();
        seen.until(&mut c, |s| s.fin.contains(&err1) && s.fin.contains(&data1))
            .await;
        let msg = String::from_utf8_lossy(&seen.data[&err1]).into_owned();
        assert!(msg.contains("error forwarding port 1 to pod pod"), "{msg}");
        // Pair 0 still echoes, after pair 1 failed.
        c.data(data0, b"ping", false).await;
        seen.until(&mut c, |s| s.data.get(&data0).is_some_and(|d| d == b"ping"))
            .await;
        // A third pair opened after the failure works too.
        let err2 = c.open(&stream("error", "81", "2")).await;
        let data2 = c.open(&stream("data", "81", "2")).await;
        c.data(data2, b"pong", true).await;
        seen.until(&mut c, |s| s.fin.contains(&data2) && s.fin.contains(&err2))
            .await;
        assert_eq!(seen.data[&data2], b"pong");
        assert!(!seen.data.contains_key(&err2) || seen.data[&err2].is_empty());
        // Ending pair 0 finishes both of its streams, the error stream without bytes.
        c.data(data0, b"", true).await;
        seen.until(&mut c, |s| s.fin.contains(&data0) && s.fin.contains(&err0))
            .await;
        assert!(seen.data.get(&err0).is_none_or(|d| d.is_empty()));
        assert!(seen.rst.is_empty(), "unexpected resets: {:?}", seen.rst);
    }

    #[tokio::test]
    async fn refuses_bad_streams_and_times_out_half_pairs() {
        let (mut c, task) = start(Duration::from_millis(300));
        let bad_port = c.open(&stream("data", "0", "0")).await;
        let bad_type = c.open(&stream("stdin", "80", "1")).await;
        let lonely = c.open(&stream("error", "80", "2")).await;
        let mut seen = Seen::default();
        seen.until(&mut c, |s| {
            s.rst.contains(&bad_port) && s.rst.contains(&bad_type) && s.fin.contains(&lonely)
        })
        .await;
        let msg = String::from_utf8_lossy(&seen.data[&lonely]).into_owned();
        assert!(msg.contains("timed out"), "{msg}");
        // A GOAWAY from the client ends the session and the server closes too.
        c.raw(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        })
        .await;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        while let Some(f) = c.next().await {
            if matches!(f, Frame::GoAway { .. }) {
                return;
            }
        }
        panic!("no GOAWAY from the server");
    }

    #[tokio::test]
    async fn falls_back_to_stream_ids_without_request_id() {
        let (mut c, _task) = start(Duration::from_secs(30));
        let err = c.open(&[("streamType", "error"), ("port", "80")]).await;
        let data = c.open(&[("streamType", "data"), ("port", "80")]).await;
        c.data(data, b"old client", true).await;
        let mut seen = Seen::default();
        seen.until(&mut c, |s| s.fin.contains(&data) && s.fin.contains(&err))
            .await;
        assert_eq!(seen.data[&data], b"old client");
    }
}
