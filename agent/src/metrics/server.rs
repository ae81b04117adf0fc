//! The endpoint Prometheus scrapes: `GET /metrics` over plain HTTP/1 at
//! `[metrics] address`, answered with [`Metrics::encode`] of what the source gathers
//! for that scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{Metrics, Scraped};

/// The content type of the OpenMetrics text exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections at once: scrapers are few, and each scrape asks every VMM.
const MAX_CONNECTIONS: usize = 16;

/// What gathers the figures read at scrape time.
pub type Source = Arc<dyn Fn() -> BoxFuture<'static, Scraped> + Send + Sync>;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} ([metrics] address): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `addr` and serves `metrics`, with what `source` gathers per scrape.
    pub async fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        source: Source,
    ) -> Result<Self, MetricsError> {
        let bind = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let accept = tokio::spawn(accept_loop(listener, metrics, source));
        Ok(Endpoint { addr, accept })
    }

    /// The bound address (the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, source: Source) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: too many connections, dropping one");
            continue;
        };
        let (metrics, source) = (metrics.clone(), source.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| answer(req, metrics.clone(), source.clone()));
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(%peer, "metrics endpoint: connection ended: {e}");
            }
        });
    }
}

/// A response of `status` with a plain-text `body`.
fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn answer<B>(
    req: Request<B>,
    metrics: Arc<Metrics>,
    source: Source,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found: try /metrics\n"));
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return Ok(r);
    }
    let scraped = source().await;
    Ok(match metrics.encode(scraped) {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Err(e) => {
            tracing::warn!("metrics endpoint: encoding failed: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_exposition_at_slash_metrics_only() {
        let metrics = Arc::new(Metrics::new());
        metrics.boot(true);
        let source: Source = Arc::new(|| {
            Box::pin(async {
                Scraped {
                    pods: vec![("ready", 1)],
                    ..Scraped::default()
                }
            })
        });
        let ep = Endpoint::start("127.0.0.1:0".parse().unwrap(), metrics, source)
            .await
            .unwrap();
        let close = "Connection: close\r\n\r\n";
        let ok = get(
            ep.addr(),
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(
            ok.contains("\nvmlet_vm_boots_total{result=\"ok\"} 1\n"),
            "{ok}"
        );
        assert!(ok.contains("\nvmlet_pods{state=\"ready\"} 1\n"), "{ok}");
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        let missing = get(ep.addr(), &format!("GET / HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(
            ep.addr(),
            &format!("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{close}"),
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let source: Source = Arc::new(|| Box::pin(async { Scraped::default() }));
        let e = Endpoint::start(addr, Arc::new(Metrics::new()), source)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot listen on {addr} ([metrics] address): ")),
            "{e}"
        );
    }
}
