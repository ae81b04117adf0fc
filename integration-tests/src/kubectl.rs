//! Real kubectl against vmletd's streaming server: the fake API server of
//! [`vmlet_test_support::kubectl`], with URLs from vmletd's CRI calls as kubelet
//! makes them.

use std::path::Path;
use std::sync::Arc;

pub use vmlet_test_support::kubectl::{
    kubectl_path, FakeApiServer, StreamCall, Transport, UrlSource,
};

/// A [`UrlSource`] that asks vmletd (CRI socket `socket`) for URLs as kubelet does:
/// exec and attach in `container_id`, port-forward in `pod_id`.
pub fn cri_urls(socket: &Path, container_id: &str, pod_id: &str) -> UrlSource {
    let (socket, container_id, pod_id) = (
        socket.to_owned(),
        container_id.to_owned(),
        pod_id.to_owned(),
    );
    Arc::new(move |call: StreamCall| {
        let (socket, container_id, pod_id) = (socket.clone(), container_id.clone(), pod_id.clone());
        Box::pin(async move { cri_url(&socket, container_id, pod_id, call).await })
    })
}

async fn cri_url(
    socket: &Path,
    container_id: String,
    pod_sandbox_id: String,
    call: StreamCall,
) -> Result<String, String> {
    use crate::cri::v1;
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://cri.sock")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .map_err(|e| e.to_string())?;
    let mut rt = v1::runtime_service_client::RuntimeServiceClient::new(channel);
    let tty = call.flag("tty");
    let (stdin, stdout, stderr) = (
        call.flag("stdin"),
        call.flag("stdout"),
        call.flag("stderr") && !tty,
    );
    let r = match call.sub.as_str() {
        "exec" => rt
            .exec(v1::ExecRequest {
                container_id,
                cmd: call.values("command"),
                tty,
                stdin,
                stdout,
                stderr,
            })
            .await
            .map(|r| r.into_inner().url),
        "attach" => rt
            .attach(v1::AttachRequest {
                container_id,
                tty,
                stdin,
                stdout,
                stderr,
            })
            .await
            .map(|r| r.into_inner().url),
        _ => rt
            .port_forward(v1::PortForwardRequest {
                pod_sandbox_id,
                port: call
                    .values("ports")
                    .iter()
                    .flat_map(|v| v.split(',').map(|p| p.parse().unwrap_or(0)))
                    .collect(),
            })
            .await
            .map(|r| r.into_inner().url),
    };
    r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}
