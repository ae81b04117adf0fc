//! Just enough of a Kubernetes API server for kubectl exec/attach/port-forward: the
//! discovery and pod GETs answered, and the streaming subresources proxied byte for
//! byte to a streaming URL, as kubelet's upgrade-aware proxy does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vmlet_streaming::{AttachRequest, ExecRequest, PortForwardRequest, StreamingServer};

/// The fake API server.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    /// `Upgrade` header of every proxied request, in order.
    pub upgrades: Arc<Mutex<Vec<String>>>,
    /// Every byte the client sent upstream on proxied connections, per connection.
    pub recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    pub async fn start(server: Arc<StreamingServer>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (u, r) = (upgrades.clone(), recorded.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(conn(s, server.clone(), u.clone(), r.clone()));
            }
        });
        Self {
            addr,
            upgrades,
            recorded,
            task,
        }
    }
}

struct Head {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    len: usize,
}

fn parse(buf: &[u8]) -> Option<Head> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hs);
    let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
        return None;
    };
    let target = req.path?.to_owned();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Some(Head {
        method: req.method?.to_owned(),
        path: path.to_owned(),
        query,
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        len,
    })
}

fn json(code: u16, body: serde_json::Value) -> Vec<u8> {
    let b = body.to_string();
    format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .into_bytes()
}

fn flag(q: &[(String, String)], k: &str) -> bool {
    q.iter().any(|(n, v)| n == k && (v == "true" || v == "1"))
}

async fn conn(
    mut s: TcpStream,
    server: Arc<StreamingServer>,
    upgrades: Arc<Mutex<Vec<String>>>,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(h) = parse(&buf) {
                break h;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        // Requests here have no body except the streaming ones, which are proxied.
        let rest = buf.split_off(head.len);
        buf = rest;
        let parts: Vec<&str> = head.path.trim_matches('/').split('/').collect();
        let resp = match parts[..] {
            ["api"] => json(
                200,
                serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ),
            ["apis"] => json(
                200,
                serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            ),
            ["api", "v1"] => json(
                200,
                serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1",
                "resources": [
                    {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                     "verbs": ["get", "list"], "shortNames": ["po"]},
                    {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
                    {"name": "pods/attach", "singularName": "", "namespaced": true, "kind": "PodAttachOptions", "verbs": ["create", "get"]},
                    {"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
                ]}),
            ),
            ["version"] => json(
                200,
                serde_json::json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0"}),
            ),
            ["api", "v1", "namespaces", ns, "pods", name] => json(
                200,
                serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "uid": "u"},
                "spec": {"containers": [{"name": "c", "image": "i", "stdin": true, "tty": true}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": true,
                    "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]}}),
            ),
            ["api", "v1", "namespaces", _, "pods", pod, sub @ ("exec" | "attach" | "portforward")] =>
            {
                let q = &head.query;
                let url = match sub {
                    "exec" => server.exec_url(ExecRequest {
                        container_id: pod.to_owned(),
                        cmd: q
                            .iter()
                            .filter(|(k, _)| k == "command")
                            .map(|(_, v)| v.clone())
                            .collect(),
                        tty: flag(q, "tty"),
                        stdin: flag(q, "stdin"),
                        stdout: flag(q, "stdout"),
                        stderr: flag(q, "stderr") && !flag(q, "tty"),
                    }),
                    "attach" => server.attach_url(AttachRequest {
                        container_id: pod.to_owned(),
                        tty: flag(q, "tty"),
                        stdin: flag(q, "stdin"),
                        stdout: flag(q, "stdout"),
                        stderr: flag(q, "stderr") && !flag(q, "tty"),
                    }),
                    _ => server.port_forward_url(PortForwardRequest {
                        pod_sandbox_id: pod.to_owned(),
                        ports: q
                            .iter()
                            .filter(|(k, _)| k == "ports")
                            .flat_map(|(_, v)| v.split(',').map(|p| p.parse().unwrap()))
                            .collect(),
                    }),
                };
                let url = match url {
                    Ok(u) => u,
                    Err(e) => {
                        let _ = s
                            .write_all(&json(
                                400,
                                serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "status": "Failure", "message": e.to_string(), "code": 400}),
                            ))
                            .await;
                        return;
                    }
                };
                let upgrade = head
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("upgrade"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                upgrades.lock().unwrap().push(upgrade);
                proxy(s, head, buf, &url, recorded).await;
                return;
            }
            _ => json(
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": format!("{} not found", head.path)}),
            ),
        };
        if s.write_all(&resp).await.is_err() {
            return;
        }
    }
}

/// Sends the request to `url` with the path rewritten and everything else as it
/// came, then copies bytes both ways until both sides are done.
async fn proxy(
    mut client: TcpStream,
    head: Head,
    early: Vec<u8>,
    url: &url::Url,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut up = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{} {} HTTP/1.1\r\n", head.method, url.path());
    for (k, v) in &head.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    up.write_all(req.as_bytes()).await.unwrap();
    up.write_all(&early).await.unwrap();
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = up.split();
    let mut seen = early;
    let c2u = async {
        let mut b = [0u8; 16 << 10];
        loop {
            match cr.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if seen.len() < 1 << 20 {
                        seen.extend_from_slice(&b[..n]);
                    }
                    if uw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = uw.shutdown().await;
    };
    let u2c = async {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(c2u, u2c);
    recorded.lock().unwrap().push(seen);
}
