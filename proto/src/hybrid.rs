//! The host side of hybrid vsock: the VMM exposes the guest's vsock as a unix socket;
//! a client connects to it, writes `CONNECT <port>\n` and reads one `OK <n>\n` line,
//! after which the stream is a plain byte stream to the guest's listener. [`channel`]
//! turns that into a tonic channel that reconnects the same way when it needs to.
//!
//! The handshake is Firecracker's text format, which no crate implements; it is two
//! lines, written here by hand.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Longest accepted handshake reply line.
const MAX_REPLY: usize = 64;

/// Why a connection to the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The VMM's vsock socket could not be reached.
    #[error("cannot connect to the VMM's vsock socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The handshake failed: the guest does not listen on the port (yet), or the VMM
    /// closed the connection.
    #[error("vsock handshake for guest port {port} failed: {reason}")]
    Handshake {
        /// The guest port.
        port: u32,
        /// What happened.
        reason: String,
    },
    /// The handshake took longer than allowed.
    #[error("vsock handshake for guest port {port} timed out after {timeout:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The limit.
        timeout: Duration,
    },
    /// tonic could not set up the HTTP/2 connection.
    #[error("cannot open a gRPC channel to the guest: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Connects to guest vsock `port` through the VMM's hybrid-vsock socket at `path`.
pub async fn connect(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    match tokio::time::timeout(timeout, handshake(path, port)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { port, timeout }),
    }
}

async fn handshake(path: &Path, port: u32) -> Result<UnixStream, ConnectError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Socket {
            path: path.to_owned(),
            source,
        })?;
    let failed = |reason: String| ConnectError::Handshake { port, reason };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| failed(format!("write: {e}")))?;
    // Byte by byte: whatever follows the newline already belongs to the guest.
    let mut line = Vec::with_capacity(16);
    loop {
        let byte = match stream.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(failed(
                    "the VMM closed the connection (is the guest listening on the port?)".into(),
                ))
            }
            Err(e) => return Err(failed(format!("read: {e}"))),
        };
        if byte == b'\n' {
            break;
        }
        if line.len() >= MAX_REPLY {
            return Err(failed("reply line too long".into()));
        }
        line.push(byte);
    }
    if line.starts_with(b"OK ") {
        Ok(stream)
    } else {
        Err(failed(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&line)
        )))
    }
}

/// A tonic channel to guest vsock `port` through the hybrid-vsock socket at `path`.
/// Connects now (failing if the guest does not answer within `timeout`) and again,
/// lazily, after the connection breaks.
pub async fn channel(path: &Path, port: u32, timeout: Duration) -> Result<Channel, ConnectError> {
    let path = path.to_owned();
    // The URI is required by tonic but never resolved: the connector decides.
    let endpoint = Endpoint::from_static("http://guest.vsock")
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                connect(&path, port, timeout)
                    .await
                    .map(TokioIo::new)
                    .map_err(io::Error::other)
            }
        }))
        .await?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    async fn fake_vmm(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(reply).await.unwrap();
            if !reply.is_empty() {
                // Keep the connection up until the client is done with it.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            }
        });
        (dir, path)
    }

    #[tokio::test]
    async fn handshake_ok_leaves_following_bytes_in_the_stream() {
        let (_dir, path) = fake_vmm(b"OK 1073741824\nhello").await;
        let mut s = connect(&path, 1024, Duration::from_secs(5)).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn refused_port_is_a_handshake_error() {
        let (_dir, path) = fake_vmm(b"").await;
        let err = connect(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Handshake { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_reply_is_a_handshake_error() {
        let (_dir, path) = fake_vmm(b"NO\n").await;
        let err = connect(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unexpected reply"), "{err}");
    }

    #[tokio::test]
    async fn missing_socket_is_a_socket_error() {
        let err = connect(
            Path::new("/nonexistent/vsock"),
            1024,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ConnectError::Socket { .. }), "{err}");
    }
}
