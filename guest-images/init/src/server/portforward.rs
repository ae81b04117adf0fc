//! Port-forwarding ([`vmlet_proto::PORT_FORWARD_PORT`]): each vsock connection from
//! the host names a TCP port; the guest connects to it on loopback and relays bytes
//! both ways.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_vsock::VsockStream;
use vmlet_proto::{PORT_FORWARD_MAX_REPLY, PORT_FORWARD_PORT};

use crate::console;

/// Most forwarded connections at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// How long the host may take to name the port, and the guest to connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the port-forward port. Never returns.
pub async fn serve() {
    let listener = super::listen::listen_retrying(PORT_FORWARD_PORT).await;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    forward(stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                console::error(format_args!("port-forward accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects to `port` on loopback: IPv4 first, then IPv6 (as kubelet's
/// reference implementation does).
async fn dial(port: u16) -> Result<TcpStream, String> {
    let v4 = TcpStream::connect(("127.0.0.1", port)).await;
    match v4 {
        Ok(s) => Ok(s),
        Err(e4) => TcpStream::connect(("::1", port))
            .await
            .map_err(|e6| format!("127.0.0.1:{port}: {e4}; [::1]:{port}: {e6}")),
    }
}

async fn forward(mut host: VsockStream) {
    let setup = async {
        let port = host
            .read_u16()
            .await
            .map_err(|e| format!("read port: {e}"))?;
        dial(port).await
    };
    let tcp = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(reason)) => return refuse(host, &reason).await,
        Err(_) => return refuse(host, "timed out").await,
    };
    if host.write_all(b"OK\n").await.is_err() {
        return;
    }
    let mut tcp = tcp;
    let _ = tokio::io::copy_bidirectional(&mut host, &mut tcp).await;
}

async fn refuse(mut host: VsockStream, reason: &str) {
    let mut line = format!("ERR {reason}");
    // Cut at a character boundary so that the line with its newline fits the cap.
    let mut end = line.len().min(PORT_FORWARD_MAX_REPLY - 1);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line.push('\n');
    let _ = host.write_all(line.as_bytes()).await;
    let _ = host.shutdown(std::net::Shutdown::Both);
}
