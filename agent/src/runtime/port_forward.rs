//! Port-forwarding (`kubectl port-forward`): one forwarded connection is one vsock
//! connection to the guest's port-forward port (see [`vmlet_proto::PORT_FORWARD_PORT`]
//! for the exchange), relayed byte for byte.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vmlet_cri::runtime::PodState;
use vmlet_proto::{PORT_FORWARD_MAX_REPLY, PORT_FORWARD_PORT};

use super::error::RuntimeError;
use super::state::Inner;

/// How long the guest may take to accept and to connect to the port.
const SETUP: Duration = Duration::from_secs(15);

/// Reads the guest's reply line, byte by byte: what follows it is forwarded data.
async fn reply<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let b = r.read_u8().await?;
        if b == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() >= PORT_FORWARD_MAX_REPLY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
        line.push(b);
    }
}

/// Connects `client` to `port` on the loopback of pod `pod_id`'s VM until both
/// directions are done.
pub async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    pod_id: &str,
    port: u16,
    mut client: S,
) -> Result<(), RuntimeError> {
    let pod = inner.pod(pod_id)?;
    if pod.info().state != PodState::Ready || !pod.vm().is_some_and(|v| v.running()) {
        return Err(RuntimeError::Precondition(format!(
            "pod sandbox {pod_id} is not ready: port-forward needs its VM running"
        )));
    }
    let vsock = pod.paths.vsock();
    let setup = async {
        let mut guest = vmlet_proto::hybrid::connect(&vsock, PORT_FORWARD_PORT, SETUP)
            .await
            .map_err(|e| e.to_string())?;
        guest
            .write_u16(port)
            .await
            .map_err(|e| format!("write: {e}"))?;
        match reply(&mut guest).await {
            Ok(l) if l == "OK" => Ok(guest),
            Ok(l) => Err(l.strip_prefix("ERR ").unwrap_or(&l).to_owned()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    let mut guest = match tokio::time::timeout(SETUP, setup).await {
        Ok(Ok(g)) => g,
        Ok(Err(reason)) => {
            return Err(RuntimeError::Precondition(format!(
                "cannot forward to port {port} of pod {pod_id}: {reason}"
            )))
        }
        Err(_) => {
            return Err(RuntimeError::Timeout(format!(
                "forwarding to port {port} of pod {pod_id}: no connection within {SETUP:?}"
            )))
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut guest).await {
        Ok((up, down)) => {
            tracing::debug!(pod = %pod_id, port, up, down, "forwarded connection done");
        }
        Err(e) => tracing::debug!(pod = %pod_id, port, "forwarded connection broke: {e}"),
    }
    Ok(())
}
