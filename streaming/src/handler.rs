//! One HTTP request: find its pending request by token, check the session caps,
//! negotiate the subprotocol, answer 101 and run the session on the upgraded
//! connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::backend::StreamBackend;
use crate::limits::{Limits, SessionGuard};
use crate::portforward;
use crate::remotecommand::{self, websocket::Encoding, Target, Version};
use crate::request::PortForwardRequest;
use crate::spdy::Connection;
use crate::token::{Pending, TokenStore};
use crate::ws;

const STREAM_PROTOCOL: &str = "x-stream-protocol-version";
const ACCEPTED_PROTOCOLS: &str = "x-accepted-stream-protocol-versions";
const WS_PROTOCOL: &str = "sec-websocket-protocol";
const WS_KEY: &str = "sec-websocket-key";

/// What every request handler needs.
pub struct Shared<B> {
    /// Pending requests.
    pub tokens: Arc<TokenStore>,
    /// Session caps.
    pub limits: Limits,
    /// The runtime.
    pub backend: Arc<B>,
    /// Cancelled when the server shuts down.
    pub cancel: CancellationToken,
    /// See [`crate::Config::stream_creation_timeout`].
    pub creation_timeout: Duration,
    /// See [`crate::Config::stream_idle_timeout`].
    pub idle_timeout: Duration,
}

type Resp = Response<Full<Bytes>>;

fn plain(code: StatusCode, msg: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every value of a header, comma lists split.
fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The client's first offer that the server supports.
fn negotiate<'a, T: Copy>(offers: &[&str], supported: &[(&'a str, T)]) -> Option<(&'a str, T)> {
    offers
        .iter()
        .find_map(|o| supported.iter().find(|(name, _)| name == o).copied())
}

enum Upgrade {
    Spdy,
    WebSocket,
}

/// Serves one request.
pub async fn handle<B: StreamBackend>(
    shared: Arc<Shared<B>>,
    mut req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"));
    }
    let path: Vec<&str> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let [route, token] = path[..] else {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    };
    let Some(pending) = shared.tokens.take(route, token) else {
        debug!(route, "unknown, used or expired streaming token");
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    };
    let upgrade = match req.headers().get(UPGRADE).and_then(|v| v.to_str().ok()) {
        Some(u) if u.eq_ignore_ascii_case("SPDY/3.1") => Upgrade::Spdy,
        Some(u) if u.eq_ignore_ascii_case("websocket") => Upgrade::WebSocket,
        _ => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "expected an upgrade to SPDY/3.1 or websocket",
            ))
        }
    };
    let key = match &pending {
        Pending::Exec(r) => format!("container {}", r.container_id),
        Pending::Attach(r) => format!("container {}", r.container_id),
        Pending::PortForward(r) => format!("pod {}", r.pod_sandbox_id),
    };
    let guard = match shared.limits.acquire(&key) {
        Ok(g) => g,
        Err(e) => {
            info!(error = %e, "streaming session refused");
            return Ok(plain(StatusCode::TOO_MANY_REQUESTS, e.to_string()));
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let headers = req.headers();
    let (resp, session) = match upgrade {
        Upgrade::Spdy => spdy_session(headers, pending),
        Upgrade::WebSocket => ws_session(headers, pending),
    };
    let Some(session) = session else {
        return Ok(resp);
    };
    let cancel = shared.cancel.clone();
    tokio::spawn(async move {
        let run = async {
            match on_upgrade.await {
                Ok(io) => run_session(&shared, session, TokioIo::new(io)).await,
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        };
        tokio::select! {
            () = run => {}
            () = cancel.cancelled() => {}
        }
        drop::<SessionGuard>(guard);
    });
    Ok(resp)
}

/// A negotiated session, waiting for its upgraded connection.
enum Session {
    SpdyExec(Version, Target),
    SpdyPortForward(String),
    WsExec(Version, Encoding, Target),
    WsPortForward(String),
    WsChannelPortForward(Encoding, PortForwardRequest),
}

fn target(p: Pending) -> Result<Target, PortForwardRequest> {
    match p {
        Pending::Exec(r) => Ok(Target::Exec(r)),
        Pending::Attach(r) => Ok(Target::Attach(r)),
        Pending::PortForward(r) => Err(r),
    }
}

fn switching(upgrade: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(upgrade));
    r
}

fn refuse(offered: &[&str], supported: &[&str], header: &'static str) -> Resp {
    let mut r = plain(
        StatusCode::FORBIDDEN,
        format!(
            "none of the requested protocols ({}) is supported ({})",
            offered.join(", "),
            supported.join(", ")
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&supported.join(", ")) {
        r.headers_mut().insert(header, v);
    }
    r
}

/// The 101 answer and the session, or the refusal.
fn spdy_session(h: &HeaderMap, p: Pending) -> (Resp, Option<Session>) {
    let offers = values(h, STREAM_PROTOCOL);
    if offers.is_empty() {
        return (
            plain(StatusCode::BAD_REQUEST, "missing X-Stream-Protocol-Version"),
            None,
        );
    }
    let (chosen, session) = match target(p) {
        Ok(t) => {
            let Some((name, v)) = negotiate(&offers, remotecommand::spdy::PROTOCOLS) else {
                let names: Vec<_> = remotecommand::spdy::PROTOCOLS.iter().map(|p| p.0).collect();
                return (refuse(&offers, &names, ACCEPTED_PROTOCOLS), None);
            };
            (name, Session::SpdyExec(v, t))
        }
        Err(pf) => {
            if !offers.contains(&portforward::spdy::PROTOCOL) {
                return (
                    refuse(&offers, &[portforward::spdy::PROTOCOL], ACCEPTED_PROTOCOLS),
                    None,
                );
            }
            (
                portforward::spdy::PROTOCOL,
                Session::SpdyPortForward(pf.pod_sandbox_id),
            )
        }
    };
    let mut r = switching("SPDY/3.1");
    r.headers_mut()
        .insert(STREAM_PROTOCOL, HeaderValue::from_static(chosen));
    (r, Some(session))
}

/// The 101 answer and the session, or the refusal.
fn ws_session(h: &HeaderMap, p: Pending) -> (Resp, Option<Session>) {
    let Some(key) = h.get(WS_KEY) else {
        return (
            plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"),
            None,
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let offers = values(h, WS_PROTOCOL);
    // A client that names no subprotocol gets the oldest binary one, unnamed.
    let (chosen, session) = match target(p) {
        Ok(t) if offers.is_empty() => ("", Session::WsExec(Version::V1, Encoding::Binary, t)),
        Ok(t) => {
            let table: Vec<(&str, (Version, Encoding))> = remotecommand::websocket::PROTOCOLS
                .iter()
                .map(|(n, v, e)| (*n, (*v, *e)))
                .collect();
            let Some((name, (v, e))) = negotiate(&offers, &table) else {
                let names: Vec<_> = table.iter().map(|p| p.0).collect();
                return (refuse(&offers, &names, WS_PROTOCOL), None);
            };
            (name, Session::WsExec(v, e, t))
        }
        Err(pf) if offers.contains(&portforward::spdy::WEBSOCKET_PROTOCOL) => (
            portforward::spdy::WEBSOCKET_PROTOCOL,
            Session::WsPortForward(pf.pod_sandbox_id),
        ),
        Err(pf) => {
            let legacy = portforward::websocket::PROTOCOLS;
            let (name, enc) = if offers.is_empty() {
                ("", Encoding::Binary)
            } else if let Some(x) = negotiate(&offers, legacy) {
                x
            } else {
                let mut names = vec![portforward::spdy::WEBSOCKET_PROTOCOL];
                names.extend(legacy.iter().map(|p| p.0));
                return (refuse(&offers, &names, WS_PROTOCOL), None);
            };
            if pf.ports.is_empty() {
                return (
                    plain(
                        StatusCode::BAD_REQUEST,
                        "the WebSocket channel protocol needs the request's ports",
                    ),
                    None,
                );
            }
            (name, Session::WsChannelPortForward(enc, pf))
        }
    };
    let mut r = switching("websocket");
    let hdrs = r.headers_mut();
    if !chosen.is_empty() {
        hdrs.insert(WS_PROTOCOL, HeaderValue::from_static(chosen));
    }
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hdrs.insert("sec-websocket-accept", v);
    }
    (r, Some(session))
}

async fn run_session<B: StreamBackend>(
    shared: &Shared<B>,
    session: Session,
    io: TokioIo<hyper::upgrade::Upgraded>,
) {
    let backend = &*shared.backend;
    match session {
        Session::SpdyExec(v, t) => {
            let conn = Connection::start(io, shared.idle_timeout);
            remotecommand::spdy::serve(conn, v, t, backend, shared.creation_timeout).await;
        }
        Session::SpdyPortForward(pod) => {
            let conn = Connection::start(io, shared.idle_timeout);
            portforward::spdy::serve(conn, pod, shared.backend.clone(), shared.creation_timeout)
                .await;
        }
        Session::WsExec(v, e, t) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws::config())).await;
            remotecommand::websocket::serve(ws, v, e, t, backend).await;
        }
        Session::WsChannelPortForward(enc, pf) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws::config())).await;
            portforward::websocket::serve(
                ws,
                enc,
                pf.pod_sandbox_id,
                pf.ports,
                shared.backend.clone(),
            )
            .await;
        }
        Session::WsPortForward(pod) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws::config())).await;
            let mut tunnel_tasks = JoinSet::new();
            let bytes = ws::tunnel(ws, &mut tunnel_tasks);
            let conn = Connection::start(bytes, shared.idle_timeout);
            portforward::spdy::serve(conn, pod, shared.backend.clone(), shared.creation_timeout)
                .await;
            // Let the tunnel flush the closing frames before its tasks are dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while tunnel_tasks.join_next().await.is_some() {}
            })
            .await;
        }
    }
}
