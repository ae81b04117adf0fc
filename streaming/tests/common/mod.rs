//! Test harness: a streaming server over [`backend::HostBackend`] with the shared fake
//! Kubernetes API server ([`vmlet_test_support::kubectl`]) in front of it, as kubelet
//! is in front of a runtime's streaming server.

#![allow(dead_code)]

pub mod backend;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use vmlet_streaming::{AttachRequest, Config, ExecRequest, PortForwardRequest, StreamingServer};
pub use vmlet_test_support::kubectl::{FakeApiServer, Transport};
use vmlet_test_support::kubectl::{StreamCall, UrlSource};

/// A streaming server and a fake API server in front of it.
pub struct Env {
    pub server: Arc<StreamingServer>,
    pub api: FakeApiServer,
}

/// URLs straight from `server`, for the request kubectl made (what the CRI's Exec,
/// Attach and PortForward calls would ask for).
fn server_urls(server: Arc<StreamingServer>) -> UrlSource {
    Arc::new(move |call: StreamCall| {
        let server = server.clone();
        Box::pin(async move {
            let tty = call.flag("tty");
            let (stdin, stdout, stderr) = (
                call.flag("stdin"),
                call.flag("stdout"),
                call.flag("stderr") && !tty,
            );
            // The test's backend takes the pod's name as the container (exec,
            // attach) or sandbox (port-forward) ID.
            let id = call.pod.clone();
            let url = match call.sub.as_str() {
                "exec" => server.exec_url(ExecRequest {
                    container_id: id,
                    cmd: call.values("command"),
                    tty,
                    stdin,
                    stdout,
                    stderr,
                }),
                "attach" => server.attach_url(AttachRequest {
                    container_id: id,
                    tty,
                    stdin,
                    stdout,
                    stderr,
                }),
                _ => server.port_forward_url(PortForwardRequest {
                    pod_sandbox_id: id,
                    ports: call
                        .values("ports")
                        .iter()
                        .flat_map(|v| v.split(',').map(|p| p.parse().unwrap_or(0)))
                        .collect(),
                }),
            };
            url.map(|u| u.to_string()).map_err(|e| e.to_string())
        })
    })
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
        // The pod's container has a terminal: kubectl attach -t follows the spec.
        let api = FakeApiServer::start_with_tty(server_urls(server.clone()), true).await;
        Self { server, api }
    }

    /// A scratch directory of the test's (kubectl's HOME).
    pub fn dir(&self) -> &std::path::Path {
        self.api.home()
    }

    /// A kubectl command using this environment and `transport`.
    pub fn kubectl(&self, transport: Transport) -> Command {
        self.api.kubectl(transport)
    }

    /// Runs kubectl with `args` and `stdin`, for at most 60 s.
    pub async fn run(&self, transport: Transport, args: &[&str], stdin: &[u8]) -> Output {
        self.api
            .run(transport, args, stdin, Duration::from_secs(60))
            .await
    }
}
