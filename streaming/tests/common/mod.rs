//! Test harness: a streaming server over [`backend::HostBackend`], a fake Kubernetes
//! API server that kubectl talks to, and helpers to run kubectl.

#![allow(dead_code)]

pub mod apiserver;
pub mod backend;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use vmlet_streaming::{Config, StreamingServer};

pub use apiserver::FakeApiServer;

/// The transports kubectl can be made to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `KUBECTL_*_WEBSOCKETS=false`: SPDY/3.1 end to end.
    Spdy,
    /// kubectl's default: WebSocket v5 for exec, SPDY tunnelled in WebSocket for
    /// port-forward.
    WebSocket,
}

/// Where kubectl is; a missing kubectl fails the test rather than skipping it.
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
        "kubectl not found at {} (set KUBECTL to its path): the Go-client tests need it",
        p.display()
    );
    p
}

/// A streaming server, a fake API server in front of it, and a kubeconfig.
pub struct Env {
    pub server: Arc<StreamingServer>,
    pub api: FakeApiServer,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    pub async fn with_config(config: Config) -> Self {
        let server = Arc::new(
            StreamingServer::start(config, Arc::new(backend::HostBackend))
                .await
                .unwrap(),
        );
        let api = FakeApiServer::start(server.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://{}\n\
             users:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n    namespace: default\n\
             current-context: t\n",
            api.addr
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
        Self { server, api, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubectl command using this environment and `transport`.
    pub fn kubectl(&self, transport: Transport) -> Command {
        let mut c = Command::new(kubectl_path());
        c.arg("--kubeconfig").arg(self.kubeconfig());
        setup_env(&mut c, self.dir.path(), transport);
        c.kill_on_drop(true);
        c
    }

    /// Runs kubectl with `args` and `stdin`, for at most 60 s.
    pub async fn run(&self, transport: Transport, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = self.kubectl(transport);
        c.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut i = child.stdin.take().unwrap();
        let input = stdin.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = i.write_all(&input).await;
        });
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl did not finish within 60 s")
            .unwrap()
    }
}

/// Environment for kubectl: its own HOME (discovery cache) and the transport switches.
pub fn setup_env(c: &mut impl EnvSet, home: &Path, transport: Transport) {
    c.set("HOME", home.to_str().unwrap());
    let ws = if transport == Transport::WebSocket {
        "true"
    } else {
        "false"
    };
    c.set("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws);
    c.set("KUBECTL_PORT_FORWARD_WEBSOCKETS", ws);
}

/// Either kind of command builder.
pub trait EnvSet {
    fn set(&mut self, k: &str, v: &str);
}

impl EnvSet for Command {
    fn set(&mut self, k: &str, v: &str) {
        self.env(k, v);
    }
}

impl EnvSet for std::process::Command {
    fn set(&mut self, k: &str, v: &str) {
        self.env(k, v);
    }
}
