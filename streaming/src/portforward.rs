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

/// The subprotocol.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The same, tunnelled in WebSocket binary messages.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Most half-open pairs at once.
const MAX_PENDING_PAIRS: usize = 256;
/// Buffer of the pipe to the backend.
const PIPE: usize = 64 << 10;

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
