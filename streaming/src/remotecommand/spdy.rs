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
    // v1 servers reset the error stream once all streams are there (kubelet keeps
    // that 1.0 behaviour), so a v1 client hears of failures only as the end.
    if version == Version::V1 {
        if let Some(mut e) = error.take() {
            e.reset().await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::backend::{BackendError, ExecStreams, ExitStatus, PortStream};
    use crate::request::{AttachRequest, ExecRequest};
    use crate::spdy::frame::{Frame, FLAG_FIN};
    use crate::spdy::testclient::Client;

    /// Writes "out" to stdout and exits with the code in `cmd[0]`.
    struct Fixed;

    impl StreamBackend for Fixed {
        async fn exec(
            &self,
            req: ExecRequest,
            mut s: ExecStreams,
        ) -> Result<ExitStatus, BackendError> {
            if let Some(o) = s.stdout.as_mut() {
                o.write_all(b"out")
                    .await
                    .map_err(|e| BackendError::Failed(e.to_string()))?;
            }
            Ok(ExitStatus {
                code: req.cmd[0].parse().unwrap(),
            })
        }

        async fn attach(&self, _: AttachRequest, _: ExecStreams) -> Result<(), BackendError> {
            Err(BackendError::NotFound("container x".into()))
        }

        async fn port_forward(&self, _: String, _: u16, _: PortStream) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn exec(code: &str) -> Target {
        Target::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec![code.into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
    }

    fn start(version: Version, target: Target, timeout: Duration) -> Client {
        let (server, client) = tokio::io::duplex(1 << 16);
        let conn = Connection::start(server, Duration::from_secs(60));
        tokio::spawn(async move {
            serve(conn, version, target, &*Arc::new(Fixed), timeout).await;
        });
        Client::new(client)
    }

    /// Frames after the SYN_REPLYs, up to and including GOAWAY.
    async fn rest(c: &mut Client) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = c.next().await {
            let end = matches!(f, Frame::GoAway { .. });
            if !matches!(f, Frame::SynReply { .. }) {
                out.push(f);
            }
            if end {
                break;
            }
        }
        out
    }

    fn data(id: u32, flags: u8, d: &'static [u8]) -> Frame {
        Frame::Data {
            stream_id: id,
            flags,
            data: Bytes::from_static(d),
        }
    }

    #[tokio::test]
    async fn v4_ends_in_order() {
        let mut c = start(Version::V4, exec("3"), Duration::from_secs(30));
        let err = c.open(&[("streamType", "error")]).await;
        let out = c.open(&[("streamType", "stdout")]).await;
        let frames = rest(&mut c).await;
        // stdout's data and FIN, then the status, then every stream reset, GOAWAY.
        assert_eq!(frames[0], data(out, 0, b"out"));
        assert_eq!(frames[1], data(out, FLAG_FIN, b""));
        let Frame::Data {
            stream_id,
            data: status,
            ..
        } = &frames[2]
        else {
            panic!("{frames:?}");
        };
        assert_eq!(*stream_id, err);
        let v: serde_json::Value = serde_json::from_slice(status).unwrap();
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(frames[3], data(err, FLAG_FIN, b""));
        assert!(matches!(frames[4], Frame::RstStream { stream_id, .. } if stream_id == err));
        assert!(matches!(frames[5], Frame::RstStream { stream_id, .. } if stream_id == out));
        assert!(matches!(frames[6], Frame::GoAway { .. }));
    }

    #[tokio::test]
    async fn v2_error_stream_is_text_and_empty_on_success() {
        for (code, want) in [
            ("0", &b""[..]),
            (
                "4",
                &b"command terminated with non-zero exit code: exit status 4"[..],
            ),
        ] {
            let mut c = start(Version::V2, exec(code), Duration::from_secs(30));
            let err = c.open(&[("streamType", "error")]).await;
            c.open(&[("streamType", "stdout")]).await;
            let got: Vec<u8> = rest(&mut c)
                .await
                .into_iter()
                .filter_map(|f| match f {
                    Frame::Data {
                        stream_id, data, ..
                    } if stream_id == err => Some(data.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn backend_errors_and_missing_streams_are_reported() {
        let attach = Target::Attach(AttachRequest {
            container_id: "x".into(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        });
        // An attach the backend refuses; an exec whose client never opens stdout.
        for (target, timeout, open_stdout, want) in [
            (
                attach,
                Duration::from_secs(30),
                true,
                "container x not found",
            ),
            (
                exec("0"),
                Duration::from_millis(200),
                false,
                "timed out waiting for client to create streams",
            ),
        ] {
            let mut c = start(Version::V4, target, timeout);
            let err = c.open(&[("streamType", "error")]).await;
            if open_stdout {
                c.open(&[("streamType", "stdout")]).await;
            }
            let status: Vec<u8> = rest(&mut c)
                .await
                .into_iter()
                .filter_map(|f| match f {
                    Frame::Data {
                        stream_id, data, ..
                    } if stream_id == err => Some(data.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect();
            let v: serde_json::Value = serde_json::from_slice(&status).unwrap();
            assert_eq!(
                (v["status"].as_str(), v["message"].as_str()),
                (Some("Failure"), Some(want))
            );
        }
    }

    #[tokio::test]
    async fn v1_resets_the_error_stream_first() {
        let mut c = start(Version::V1, exec("5"), Duration::from_secs(30));
        let err = c.open(&[("streamType", "error")]).await;
        let out = c.open(&[("streamType", "stdout")]).await;
        let frames = rest(&mut c).await;
        assert!(matches!(frames[0], Frame::RstStream { stream_id, .. } if stream_id == err));
        assert_eq!(frames[1], data(out, 0, b"out"));
        assert!(!frames
            .iter()
            .any(|f| matches!(f, Frame::Data { stream_id, .. } if *stream_id == err)));
    }
}
