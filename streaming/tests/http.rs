//! The HTTP side without a Go client: tokens, protocol negotiation, session caps, TLS.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use vmlet_streaming::{
    Config, ExecRequest, PortForwardRequest, RequestError, StreamingServer, TlsFiles, Url,
};

async fn server(config: Config) -> StreamingServer {
    StreamingServer::start(config, Arc::new(common::backend::HostBackend))
        .await
        .unwrap()
}

fn exec(container: &str) -> ExecRequest {
    ExecRequest {
        container_id: container.into(),
        cmd: vec!["true".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

/// Status code, head and body of the answer to `extra_headers` sent to `path`.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, String, String) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let code = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        body.extend_from_slice(&b[..n]);
    }
    (code, head, String::from_utf8_lossy(&body).into_owned())
}

async fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    send(TcpStream::connect(addr).await.unwrap(), "POST", path, extra).await
}

const SPDY_EXEC: &str =
    "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n";

#[tokio::test]
async fn urls_and_single_use_tokens() {
    let s = server(Config::default()).await;
    let url = s.exec_url(exec("c")).unwrap();
    assert_eq!(url.scheme(), "http");
    assert_eq!(url.host_str(), Some("127.0.0.1"));
    assert_eq!(url.port(), Some(s.local_addr().port()));
    assert!(url.path().starts_with("/exec/"));
    // Unknown token, and a known token on the wrong route (which spends it).
    assert_eq!(get(s.local_addr(), "/exec/nope", SPDY_EXEC).await.0, 404);
    let attach_path = url.path().replace("/exec/", "/attach/");
    assert_eq!(get(s.local_addr(), &attach_path, SPDY_EXEC).await.0, 404);
    assert_eq!(get(s.local_addr(), url.path(), SPDY_EXEC).await.0, 404);
    // First use upgrades, the second is 404.
    let url = s.exec_url(exec("c")).unwrap();
    let (code, head, _) = get(s.local_addr(), url.path(), SPDY_EXEC).await;
    assert_eq!(code, 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    assert_eq!(get(s.local_addr(), url.path(), SPDY_EXEC).await.0, 404);
    // Invalid requests get no URL.
    let mut bad = exec("c");
    bad.tty = true;
    assert_eq!(s.exec_url(bad), Err(RequestError::TtyWithStderr));
    assert_eq!(
        s.port_forward_url(PortForwardRequest {
            pod_sandbox_id: String::new(),
            ports: vec![]
        }),
        Err(RequestError::NoPod)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_404() {
    let s = server(Config {
        token_ttl: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let url = s.exec_url(exec("c")).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(s.local_addr(), url.path(), SPDY_EXEC).await.0, 404);
}

#[tokio::test]
async fn negotiation_errors() {
    let s = server(Config::default()).await;
    let a = s.local_addr();
    let p = |s: &StreamingServer| s.exec_url(exec("c")).unwrap().path().to_owned();
    // No upgrade at all.
    assert_eq!(get(a, &p(&s), "").await.0, 400);
    // SPDY without a subprotocol.
    let (code, _, body) = get(a, &p(&s), "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n").await;
    assert_eq!(
        (code, body.trim()),
        (400, "missing X-Stream-Protocol-Version")
    );
    // Nothing in common: 403 and the server's list.
    let (code, head, _) = get(
        a,
        &p(&s),
        "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v9.channel.k8s.io\r\n",
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v5.channel.k8s.io, v4.channel.k8s.io"),
        "{head}"
    );
    // Comma-separated offers: the client's first supported one wins.
    let (code, head, _) = get(
        a,
        &p(&s),
        "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v9.channel.k8s.io, v3.channel.k8s.io\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
    )
    .await;
    assert_eq!(code, 101);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-stream-protocol-version: v3.channel.k8s.io"),
        "{head}"
    );
    // Port-forward insists on its protocol.
    let pf = s
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![],
        })
        .unwrap();
    assert_eq!(get(a, pf.path(), SPDY_EXEC).await.0, 403);
    // WebSocket: the subprotocol must match too, and the accept key is derived.
    let ws = |proto: &str| {
        format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {proto}\r\n"
        )
    };
    assert_eq!(get(a, &p(&s), &ws("v9.channel.k8s.io")).await.0, 403);
    let (code, head, _) = get(a, &p(&s), &ws("v5.channel.k8s.io")).await;
    assert_eq!(code, 101);
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
}

#[tokio::test]
async fn session_caps() {
    let s = server(Config {
        max_sessions_per_target: 1,
        max_sessions: 2,
        ..Config::default()
    })
    .await;
    let a = s.local_addr();
    // A session counts from its upgrade until it ends; these wait for streams that
    // never come, so they stay open while the connection does.
    let hold = |url: Url| async move {
        let mut c = TcpStream::connect(a).await.unwrap();
        let req = format!("POST {} HTTP/1.1\r\nHost: x\r\n{SPDY_EXEC}\r\n", url.path());
        c.write_all(req.as_bytes()).await.unwrap();
        let mut b = [0u8; 12];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b[9..12], b"101");
        c
    };
    let _c1 = hold(s.exec_url(exec("c")).unwrap()).await;
    let (code, _, body) = get(a, s.exec_url(exec("c")).unwrap().path(), SPDY_EXEC).await;
    assert_eq!(
        (code, body.trim()),
        (429, "too many streaming sessions for container c (limit 1)")
    );
    let c2 = hold(s.exec_url(exec("d")).unwrap()).await;
    let (code, _, body) = get(a, s.exec_url(exec("e")).unwrap().path(), SPDY_EXEC).await;
    assert_eq!(
        (code, body.trim()),
        (429, "too many streaming sessions on this node (limit 2)")
    );
    // Closing a session frees its place.
    drop(c2);
    let mut code = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        code = get(a, s.exec_url(exec("e")).unwrap().path(), SPDY_EXEC)
            .await
            .0;
        if code == 101 {
            break;
        }
    }
    assert_eq!(code, 101);
}

#[tokio::test]
async fn tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed to make a test certificate");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let s = server(Config {
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key,
        }),
        ..Config::default()
    })
    .await;
    let url = s.exec_url(exec("c")).unwrap();
    assert_eq!(url.scheme(), "https");
    // curl speaks TLS for us: an unknown token is 404, a real one upgrades.
    let curl = |path: &str| {
        let mut c = tokio::process::Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            "--cacert",
        ])
        .arg(&cert)
        .args([
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: SPDY/3.1",
            "-H",
            "X-Stream-Protocol-Version: v4.channel.k8s.io",
            "-X",
            "POST",
        ])
        .arg(format!("https://127.0.0.1:{}{path}", s.local_addr().port()));
        async move {
            let out = c.output().await.expect("curl is needed for the TLS test");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(curl("/exec/nope").await, "404");
    assert_eq!(curl(url.path()).await, "101");
}

/// A non-kubectl WebSocket client (the channel protocols other clients use):
/// channel bytes, base64 text frames, stdin, and the v4 Status on channel 3.
async fn ws_exec(
    proto: &str,
    cmd: &str,
    stdin: Option<&[u8]>,
) -> (Vec<u8>, Vec<u8>, serde_json::Value) {
    use base64::Engine as _;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let s = server(Config::default()).await;
    let url = s
        .exec_url(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            tty: false,
            stdin: stdin.is_some(),
            stdout: true,
            stderr: true,
        })
        .unwrap();
    let tcp = TcpStream::connect(s.local_addr()).await.unwrap();
    let mut req = url
        .as_str()
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", proto.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], proto);
    let b64 = proto.contains("base64");
    if let Some(input) = stdin {
        let m = if b64 {
            Message::Text(
                format!(
                    "0{}",
                    base64::engine::general_purpose::STANDARD.encode(input)
                )
                .into(),
            )
        } else {
            let mut v = vec![0u8];
            v.extend_from_slice(input);
            Message::Binary(v.into())
        };
        ws.send(m).await.unwrap();
    }
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        let (ch, data) = match m.unwrap() {
            Message::Binary(b) if !b64 => (b[0], b[1..].to_vec()),
            Message::Text(t) if b64 => (
                t.as_bytes()[0] - b'0',
                base64::engine::general_purpose::STANDARD
                    .decode(&t.as_bytes()[1..])
                    .unwrap(),
            ),
            Message::Close(c) => {
                assert_eq!(
                    c.unwrap().code,
                    tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal
                );
                break;
            }
            other => panic!("unexpected message {other:?}"),
        };
        match ch {
            1 => out.extend(data),
            2 => err.extend(data),
            3 => status.extend(data),
            _ => panic!("message on channel {ch}"),
        }
    }
    (out, err, serde_json::from_slice(&status).unwrap())
}

#[tokio::test]
async fn websocket_base64_channels() {
    let (out, err, status) = ws_exec(
        "v4.base64.channel.k8s.io",
        "printf hello; printf oops >&2; exit 2",
        None,
    )
    .await;
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"hello"[..], &b"oops"[..])
    );
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "2");
}

#[tokio::test]
async fn websocket_v4_binary_stdin() {
    let (out, _, status) = ws_exec("v4.channel.k8s.io", "head -c 3", Some(b"abcdef")).await;
    assert_eq!(out, b"abc");
    assert_eq!(
        status,
        serde_json::json!({"metadata": {}, "status": "Success"})
    );
}

/// WebSocket pings are answered while the command is quiet (client-go gives up
/// after about a minute without pongs).
#[tokio::test]
async fn websocket_pings_answered_during_a_quiet_command() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let s = server(Config::default()).await;
    let url = s
        .exec_url(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sleep".into(), "3".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let tcp = TcpStream::connect(s.local_addr()).await.unwrap();
    let mut req = url
        .as_str()
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    // The empty "session is up" message on stdout comes first.
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![1u8].into())
    );
    ws.send(Message::Ping(b"hb".to_vec().into())).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("no pong while the command runs")
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::Pong(b"hb".to_vec().into()));
}

/// Shutting the server down ends its sessions, not only the listener.
#[tokio::test]
async fn shutdown_ends_sessions() {
    let s = server(Config::default()).await;
    let url = s.exec_url(exec("c")).unwrap();
    let mut c = TcpStream::connect(s.local_addr()).await.unwrap();
    let req = format!("POST {} HTTP/1.1\r\nHost: x\r\n{SPDY_EXEC}\r\n", url.path());
    c.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[9..12], b"101");
    let addr = s.local_addr();
    s.shutdown().await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("the session outlived the server")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

/// The WebSocket channel protocol for port-forward: ports from the request, a data
/// and an error channel per port, each opened with the port number; a port with
/// nothing listening reports on its error channel while the other keeps working.
#[tokio::test]
async fn websocket_channel_port_forward() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dead_port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let s = server(Config::default()).await;
    let pf = |ports: Vec<u16>| {
        s.port_forward_url(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports,
        })
        .unwrap()
    };
    // Without the request's ports this protocol cannot work.
    let ws_head = |proto: &str| {
        format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {proto}\r\n"
        )
    };
    assert_eq!(
        get(
            s.local_addr(),
            pf(vec![]).path(),
            &ws_head("v4.channel.k8s.io")
        )
        .await
        .0,
        400
    );
    let url = pf(vec![echo_port, dead_port]);
    let tcp = TcpStream::connect(s.local_addr()).await.unwrap();
    let mut req = url
        .as_str()
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let mut next = async || match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Binary(b))) => (b[0], b[1..].to_vec()),
        other => panic!("unexpected {other:?}"),
    };
    for (ch, port) in [
        (0, echo_port),
        (1, echo_port),
        (2, dead_port),
        (3, dead_port),
    ] {
        assert_eq!(next().await, (ch, port.to_le_bytes().to_vec()));
    }
    let (mut echoed, mut error) = (Vec::new(), String::new());
    let mut sent = false;
    while echoed != b"hello" || error.is_empty() {
        if !sent {
            ws.send(Message::Binary([&[0u8][..], b"hello"].concat().into()))
                .await
                .unwrap();
            sent = true;
        }
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Binary(b))) if b[0] == 0 => echoed.extend_from_slice(&b[1..]),
            Some(Ok(Message::Binary(b))) if b[0] == 3 => {
                error.push_str(&String::from_utf8_lossy(&b[1..]))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        error.contains(&format!("error forwarding port {dead_port} to pod p")),
        "{error}"
    );
    // The client leaving ends the session.
    ws.close(None).await.unwrap();
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        if m.is_close() {
            break;
        }
    }
}
