//! The CRI streaming server over the runtime: the [`StreamBackend`] that serves
//! sessions with the runtime's VMs, and the [`StreamUrls`] the RuntimeService asks
//! for session URLs.

use std::sync::Arc;

use vmlet_cri::image::{BackendError as CriError, ErrorKind};
use vmlet_cri::runtime::{AttachSession, ExecSession, PortForwardSession, StreamUrls};
use vmlet_streaming::{
    AttachRequest, BackendError, Config, ExecRequest, ExecStreams, ExitStatus, PortForwardRequest,
    PortStream, RequestError, ServerError, StreamBackend, StreamingServer,
};

use crate::runtime::{Runtime, RuntimeError};

/// Serves streaming sessions with the runtime.
pub struct Backend {
    runtime: Runtime,
}

fn backend_error(e: RuntimeError) -> BackendError {
    match e {
        RuntimeError::NotFound(m) => BackendError::NotFound(m),
        e => BackendError::Failed(e.to_string()),
    }
}

impl StreamBackend for Backend {
    async fn exec(
        &self,
        req: ExecRequest,
        streams: ExecStreams,
    ) -> Result<ExitStatus, BackendError> {
        let code = self
            .runtime
            .exec_streaming(&req.container_id, req.cmd, req.tty, streams)
            .await
            .map_err(backend_error)?;
        Ok(ExitStatus { code })
    }

    async fn attach(&self, req: AttachRequest, streams: ExecStreams) -> Result<(), BackendError> {
        self.runtime
            .attach(&req.container_id, streams)
            .await
            .map_err(backend_error)
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        stream: PortStream,
    ) -> Result<(), BackendError> {
        self.runtime
            .port_forward(&pod_sandbox_id, port, stream)
            .await
            .map_err(backend_error)
    }
}

/// The running streaming server, handing out URLs for checked CRI requests.
pub struct Urls {
    server: StreamingServer,
}

impl Urls {
    /// Starts the streaming server on `config` over `runtime`.
    pub async fn start(config: Config, runtime: Runtime) -> Result<Arc<Self>, ServerError> {
        let server = StreamingServer::start(config, Arc::new(Backend { runtime })).await?;
        Ok(Arc::new(Urls { server }))
    }

    /// The server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }
}

fn cri_error(e: RequestError) -> CriError {
    let kind = match e {
        RequestError::TooManyPending(_) => ErrorKind::Unavailable,
        RequestError::Random(_) => ErrorKind::Internal,
        _ => ErrorKind::InvalidArgument,
    };
    CriError::new(kind, e.to_string())
}

impl StreamUrls for Urls {
    fn exec_url(&self, s: ExecSession) -> Result<String, CriError> {
        let url = self
            .server
            .exec_url(ExecRequest {
                container_id: s.container_id,
                cmd: s.cmd,
                tty: s.tty,
                stdin: s.stdin,
                stdout: s.stdout,
                stderr: s.stderr,
            })
            .map_err(cri_error)?;
        Ok(url.to_string())
    }

    fn attach_url(&self, s: AttachSession) -> Result<String, CriError> {
        let url = self
            .server
            .attach_url(AttachRequest {
                container_id: s.container_id,
                tty: s.tty,
                stdin: s.stdin,
                stdout: s.stdout,
                stderr: s.stderr,
            })
            .map_err(cri_error)?;
        Ok(url.to_string())
    }

    fn port_forward_url(&self, s: PortForwardSession) -> Result<String, CriError> {
        let url = self
            .server
            .port_forward_url(PortForwardRequest {
                pod_sandbox_id: s.pod_sandbox_id,
                ports: s.ports,
            })
            .map_err(cri_error)?;
        Ok(url.to_string())
    }
}
