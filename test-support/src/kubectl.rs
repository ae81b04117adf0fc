//! Real kubectl against a streaming server: a fake Kubernetes API server that answers
//! kubectl's discovery and pod lookups, gets a streaming URL for each
//! exec/attach/port-forward from a [`UrlSource`] (vmletd's CRI calls, as kubelet
//! makes them, or a streaming server directly) and proxies the upgraded connection to
//! it byte for byte, as kubelet's upgrade-aware proxy does.

// A test fixture: a failed setup step (bind, spawn, openpty) panics with its message,
// which is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How kubectl connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `KUBECTL_*_WEBSOCKETS=false`: SPDY/3.1 end to end.
    Spdy,
    /// kubectl's default: WebSocket.
    WebSocket,
}

/// A streaming subresource request: `exec`, `attach` or `portforward`, with its
/// query parameters.
#[derive(Debug, Clone)]
pub struct StreamCall {
    /// The pod's name.
    pub pod: String,
    /// The subresource.
    pub sub: String,
    /// Query parameters in order (`command` repeats).
    pub query: Vec<(String, String)>,
}

impl Transport {
    /// kubectl's environment switches for this transport.
    pub fn env(self) -> [(&'static str, &'static str); 2] {
        let ws = if self == Transport::WebSocket {
            "true"
        } else {
            "false"
        };
        [
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws),
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", ws),
        ]
    }
}

impl StreamCall {
    /// A boolean query parameter.
    pub fn flag(&self, k: &str) -> bool {
        self.query
            .iter()
            .any(|(n, v)| n == k && (v == "true" || v == "1"))
    }

    /// Every value of a parameter.
    pub fn values(&self, k: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Where the fake API server gets a streaming URL for a call.
pub type UrlSource = Arc<
    dyn Fn(StreamCall) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// Where kubectl is: `KUBECTL`, else `/usr/local/bin/kubectl` (`scripts/setup.sh`),
/// else `/usr/bin/kubectl`.
pub fn kubectl_path() -> PathBuf {
    let p = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/local/bin/kubectl", "/usr/bin/kubectl"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
    assert!(
        p.exists(),
        "kubectl not found at {} (set KUBECTL to its path)",
        p.display()
    );
    p
}

/// The fake API server and a kubeconfig naming it.
pub struct FakeApiServer {
    /// Its address.
    pub addr: SocketAddr,
    /// `Upgrade` header of every proxied request.
    pub upgrades: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts serving on loopback (call inside a Tokio runtime); its pod's container
    /// keeps stdin open without a terminal.
    pub async fn start(urls: UrlSource) -> Self {
        Self::start_with_tty(urls, false).await
    }

    /// Starts serving a pod whose container has a terminal (`tty`) or not. kubectl
    /// attach follows the pod spec: it uses a terminal only where the container has
    /// one.
    pub async fn start_with_tty(urls: UrlSource, tty: bool) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("local addr");
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let u = upgrades.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(conn(s, urls.clone(), u.clone(), tty));
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n    namespace: default\n\
             current-context: t\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("kubeconfig");
        Self {
            addr,
            upgrades,
            dir,
            task,
        }
    }

    /// The kubeconfig naming this server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// kubectl's HOME (its discovery cache), a directory the test may use too.
    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// A kubectl command for this server over `transport`, with its own HOME.
    pub fn kubectl(&self, transport: Transport) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(kubectl_path());
        c.arg("--kubeconfig").arg(self.kubeconfig());
        c.env("HOME", self.home())
            .envs(transport.env())
            .kill_on_drop(true);
        c
    }

    /// As [`FakeApiServer::kubectl`], a blocking command (for a test that sets up
    /// the child itself, a controlling terminal say).
    pub fn std_kubectl(&self, transport: Transport) -> std::process::Command {
        let mut c = std::process::Command::new(kubectl_path());
        c.arg("--kubeconfig").arg(self.kubeconfig());
        c.env("HOME", self.home()).envs(transport.env());
        c
    }

    /// Runs kubectl with `args` and `stdin` for at most `limit`.
    pub async fn run(
        &self,
        transport: Transport,
        args: &[&str],
        stdin: &[u8],
        limit: Duration,
    ) -> std::process::Output {
        let mut c = self.kubectl(transport);
        c.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("spawn kubectl");
        let mut i = child.stdin.take().expect("stdin");
        let input = stdin.to_vec();
        tokio::spawn(async move {
            let _ = i.write_all(&input).await;
        });
        tokio::time::timeout(limit, child.wait_with_output())
            .await
            .expect("kubectl did not finish in time")
            .expect("kubectl output")
    }

    /// Runs kubectl with `args` in a terminal of `rows` x `cols` (its stdin, stdout
    /// and stderr), typing `input` into it, for at most `limit`; returns its exit
    /// status and everything the terminal showed.
    pub async fn run_in_terminal(
        &self,
        transport: Transport,
        args: &[&str],
        (rows, cols): (u16, u16),
        input: &[u8],
        limit: Duration,
    ) -> (std::process::ExitStatus, Vec<u8>) {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let tty = |fd: &std::os::fd::OwnedFd| {
            std::process::Stdio::from(fd.try_clone().expect("dup terminal"))
        };
        let mut c = self.kubectl(transport);
        c.args(args)
            .stdin(tty(&pty.slave))
            .stdout(tty(&pty.slave))
            .stderr(tty(&pty.slave));
        let mut child = c.spawn().expect("spawn kubectl");
        // Only kubectl holds the terminal now (the command kept copies of its
        // stdio): reads end (EIO) when it exits.
        drop(c);
        drop(pty.slave);
        let mut master = std::fs::File::from(pty.master);
        let mut writer = master.try_clone().expect("dup terminal master");
        let input = input.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = writer.write_all(&input);
        });
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            out
        });
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .expect("kubectl did not finish in time")
            .expect("kubectl status");
        let out = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("terminal output did not end after kubectl exited")
            .expect("terminal reader");
        (status, out)
    }

    /// Whether every proxied request upgraded to `transport`'s protocol.
    pub fn upgraded_only_to(&self, transport: Transport) -> Result<(), String> {
        let want = match transport {
            Transport::Spdy => "SPDY/3.1",
            Transport::WebSocket => "websocket",
        };
        let seen = self.upgrades.lock().map(|u| u.clone()).unwrap_or_default();
        if seen.is_empty() || !seen.iter().all(|u| u.eq_ignore_ascii_case(want)) {
            return Err(format!("expected only {want} upgrades, saw {seen:?}"));
        }
        Ok(())
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

async fn conn(mut s: TcpStream, urls: UrlSource, upgrades: Arc<Mutex<Vec<String>>>, tty: bool) {
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
        buf = buf.split_off(head.len);
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
                "spec": {"containers": [{"name": "c", "image": "i",
                    "stdin": true, "stdinOnce": true, "tty": tty}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": true,
                    "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]}}),
            ),
            ["api", "v1", "namespaces", _, "pods", pod, sub @ ("exec" | "attach" | "portforward")] =>
            {
                let call = StreamCall {
                    pod: pod.to_owned(),
                    sub: sub.to_owned(),
                    query: head.query.clone(),
                };
                match urls(call).await {
                    Ok(url) => {
                        let upgrade = head
                            .headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("upgrade"))
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        if let Ok(mut u) = upgrades.lock() {
                            u.push(upgrade);
                        }
                        proxy(s, head, buf, &url).await;
                        return;
                    }
                    Err(e) => json(
                        400,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "status": "Failure", "message": e, "code": 400}),
                    ),
                }
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

/// Sends the request to `url` with the path rewritten, then copies bytes both ways.
async fn proxy(mut client: TcpStream, head: Head, early: Vec<u8>, url: &str) {
    let Ok(url) = url::Url::parse(url) else {
        return;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return;
    };
    let Ok(mut up) = TcpStream::connect((host.trim_matches(['[', ']']), port)).await else {
        return;
    };
    let mut req = format!("{} {} HTTP/1.1\r\n", head.method, url.path());
    for (k, v) in &head.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if up.write_all(req.as_bytes()).await.is_err() || up.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
}
