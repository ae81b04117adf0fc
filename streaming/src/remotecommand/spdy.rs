//! Exec and attach over SPDY: one stream per channel, told apart by the `streamtype`
//! header, opened by the client after the upgrade.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{run, Target, Transport, Version};
use crate::backend::StreamBackend;
use crate::spdy::{Connection, SendHalf};
use crate::status::{status_json, status_text, Outcome};

/// Subprotocols offered in `X-Stream-Protocol-Version`, best first. v5 adds only the
/// WebSocket close signal, so over SPDY it is v4.
pub const PROTOCOLS: &[(&str, Version)] = &[
    ("v5.channel.k8s.io", Version::V4),
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// Serves one session on an upgraded connection, then closes it: output streams
/// finished, the status written on the error stream, every stream reset, GOAWAY.
pub async fn serve<B: StreamBackend>(
    mut conn: Connection,
    version: Version,
    target: Target,
    backend: &B,
    creation_timeout: Duration,
) {
    let (tty, stdin, stdout, stderr) = target.flags();
    let resize = tty && version >= Version::V3;
    let expected =
        1 + usize::from(stdin) + usize::from(stdout) + usize::from(stderr) + usize::from(resize);
    let mut error: Option<SendHalf> = None;
    let mut t = Transport::default();
    let mut got = 0;
    let deadline = tokio::time::sleep(creation_timeout);
    tokio::pin!(deadline);
    while got < expected {
        let s = tokio::select! {
            s = conn.accept() => match s {
                Some(s) => s,
                None => {
                    debug!("client left before opening its streams");
                    return;
                }
            },
            () = &mut deadline => {
                let msg = "timed out waiting for client to create streams";
                debug!(got, expected, "{msg}");
                if let Some(e) = error.as_mut() {
                    write_status(e, version, &Outcome::Failed(msg.into())).await;
                }
                conn.close().await;
                return;
            }
        };
        let kind = s.headers().get("streamtype").unwrap_or_default().to_owned();
        let (r, w) = s.split();
        let slot_free = match kind.as_str() {
            "error" => error.is_none(),
            "stdin" => stdin && t.stdin.is_none(),
            "stdout" => stdout && t.stdout.is_none(),
            "stderr" => stderr && t.stderr.is_none(),
            "resize" => resize && t.resize.is_none(),
            _ => false,
        };
        if !slot_free {
            debug!(streamtype = %kind, "ignoring an unexpected stream");
            continue;
        }
        got += 1;
        match kind.as_str() {
            "error" => error = Some(w),
            "stdin" => t.stdin = Some(Box::new(r)),
            "stdout" => t.stdout = Some(Box::new(w)),
            "stderr" => t.stderr = Some(Box::new(w)),
            _ => t.resize = Some(Box::new(r)),
        }
    }
    // Keep reading the connection while the backend runs: streams opened now are
    // extra, and the end of the connection (client gone, GOAWAY, idle timeout)
    // ends the session, dropping the backend's future.
    let client_gone = async {
        while let Some(s) = conn.accept().await {
            debug!(
                id = s.id(),
                "ignoring a stream opened after the session started"
            );
        }
    };
    let outcome = tokio::select! {
        o = run(backend, target, t) => o,
        () = client_gone => {
            debug!("client went away during the session");
            return;
        }
    };
    if let Some(e) = error.as_mut() {
        write_status(e, version, &outcome).await;
    }
    conn.close().await;
}

async fn write_status(e: &mut SendHalf, version: Version, outcome: &Outcome) {
    let body = if version >= Version::V4 {
        Some(status_json(outcome))
    } else {
        status_text(outcome)
    };
    if let Some(body) = body {
        let _ = e.write_all(&body).await;
    }
    let _ = e.shutdown().await;
}
