//! The streaming server: binds, hands out URLs for pending requests, and serves each
//! accepted connection (plain or TLS) with the HTTP handler.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_native_tls::native_tls;
use tokio_native_tls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;

use crate::backend::StreamBackend;
use crate::config::{Config, TlsFiles};
use crate::handler::{self, Shared};
use crate::limits::Limits;
use crate::request::{AttachRequest, ExecRequest, PortForwardRequest, RequestError};
use crate::token::{Pending, TokenStore};

/// How long a client may take to send its request head (TLS handshake included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections before their upgrade (sessions are capped apart): with the
/// header timeout, this bounds what idle or slow clients can hold.
const MAX_HTTP_CONNECTIONS: usize = 256;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The certificate or key could not be loaded.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The bound address does not make a URL.
    #[error("no URL for {addr}: {reason}")]
    Url {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running streaming server. Dropping it (or [`StreamingServer::shutdown`]) stops
/// listening and ends every session.
pub struct StreamingServer {
    tokens: Arc<TokenStore>,
    base: Url,
    addr: SocketAddr,
    cancel: CancellationToken,
    accept: Option<JoinHandle<()>>,
}

impl StreamingServer {
    /// Binds `config.addr` and serves sessions with `backend`.
    pub async fn start<B: StreamBackend>(
        config: Config,
        backend: Arc<B>,
    ) -> Result<Self, ServerError> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.addr,
            source,
        })?;
        let base = base_url(addr, tls.is_some())?;
        let tokens = Arc::new(TokenStore::new(config.token_ttl, config.max_pending));
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            tokens: tokens.clone(),
            limits: Limits::new(config.max_sessions_per_target, config.max_sessions),
            backend,
            cancel: cancel.clone(),
            creation_timeout: config.stream_creation_timeout,
            idle_timeout: config.stream_idle_timeout,
        });
        info!(%base, "streaming server listening");
        let accept = tokio::spawn(accept_loop(listener, tls, shared, cancel.clone()));
        Ok(Self {
            tokens,
            base,
            addr,
            cancel,
            accept: Some(accept),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client connects to for `req`, valid once and for the token TTL.
    pub fn exec_url(&self, req: ExecRequest) -> Result<Url, RequestError> {
        req.validate()?;
        self.url(Pending::Exec(req))
    }

    /// The URL for an attach.
    pub fn attach_url(&self, req: AttachRequest) -> Result<Url, RequestError> {
        req.validate()?;
        self.url(Pending::Attach(req))
    }

    /// The URL for a port-forward.
    pub fn port_forward_url(&self, req: PortForwardRequest) -> Result<Url, RequestError> {
        req.validate()?;
        self.url(Pending::PortForward(req))
    }

    fn url(&self, p: Pending) -> Result<Url, RequestError> {
        let route = p.route();
        let token = self.tokens.insert(p)?;
        let mut url = self.base.clone();
        url.set_path(&format!("/{route}/{token}"));
        Ok(url)
    }

    /// Stops listening and ends every connection and session.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(accept) = &self.accept {
            accept.abort();
        }
    }
}

/// `http(s)://ADDR:PORT/`; an unspecified bind address is advertised as loopback.
fn base_url(addr: SocketAddr, tls: bool) -> Result<Url, ServerError> {
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let scheme = if tls { "https" } else { "http" };
    Url::parse(&format!("{scheme}://{shown}/")).map_err(|e| ServerError::Url {
        addr,
        reason: e.to_string(),
    })
}

/// OpenSSL through native-tls, the TLS stack the workspace already builds (the
/// registry client uses it). The key must be PKCS#8 PEM.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServerError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ServerError::Tls(format!("{}: {e}", p.display())))
    };
    let (cert, key) = (read(&files.cert)?, read(&files.key)?);
    let identity = native_tls::Identity::from_pkcs8(&cert, &key).map_err(|e| {
        ServerError::Tls(format!(
            "{} with {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(acceptor))
}

async fn accept_loop<B: StreamBackend>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared<B>>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many connections, dropping one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let serve = async {
                let _slot = slot;
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => serve_http(s, shared).await,
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => serve_http(tcp, shared).await,
                }
            };
            tokio::select! {
                () = serve => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

async fn serve_http<IO, B>(io: IO, shared: Arc<Shared<B>>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: StreamBackend,
{
    let svc = service_fn(move |req| handler::handle(shared.clone(), req));
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}
