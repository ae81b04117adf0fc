//! A tower layer around the CRI services that counts every call by method and gRPC
//! code and times it until its response begins.
//!
//! The code is the one in the response head: tonic answers a call that fails with a
//! trailers-only response (`grpc-status` among the headers), and one that succeeds
//! with the code in its trailers, so a head without a code is OK. A streaming call
//! (GetContainerEvents) is counted when its stream opens.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use tonic::codegen::http;
use tonic::Code;

use super::Metrics;

/// The CRI v1 methods (`runtime.v1.RuntimeService` and `runtime.v1.ImageService`);
/// a path naming another is counted as `other`, so that no client can make a label
/// value of its own.
const METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// The method label of a gRPC path: its last segment, if it is a CRI method.
fn method(path: &str) -> &'static str {
    let last = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == last)
        .copied()
        .unwrap_or("other")
}

/// A gRPC code's name, as gRPC's own libraries print it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The code a response head carries (OK when it has none: see the module's note).
fn code_of(headers: &http::HeaderMap) -> &'static str {
    match headers.get("grpc-status") {
        Some(v) => code_name(Code::from_bytes(v.as_bytes())),
        None => "OK",
    }
}

/// Counts and times the calls of the services it wraps.
#[derive(Debug, Clone)]
pub struct CallsLayer {
    metrics: Arc<Metrics>,
}

impl CallsLayer {
    /// Calls go to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        CallsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls are counted and timed (see [`CallsLayer`]).
#[derive(Debug, Clone)]
pub struct Calls<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Calls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method(request.uri().path());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(r) => code_of(r.headers()),
                // The transport failed the call: no status reached the client.
                Err(_) => code_name(Code::Unknown),
            };
            metrics.cri_call(method, code, started.elapsed());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::sample;
    use crate::metrics::Scraped;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn methods_are_the_cri_ones_only() {
        assert_eq!(
            method("/runtime.v1.RuntimeService/RunPodSandbox"),
            "RunPodSandbox"
        );
        assert_eq!(method("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(method("/runtime.v1.RuntimeService/MakeMeALabel"), "other");
        assert_eq!(method(""), "other");
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_the_code_of_their_head() {
        let metrics = Arc::new(Metrics::new());
        let mut svc = CallsLayer::new(metrics.clone()).layer(tower::service_fn(
            |r: http::Request<()>| async move {
                let mut response = http::Response::new(());
                if r.uri().path().ends_with("StopPodSandbox") {
                    response
                        .headers_mut()
                        .insert("grpc-status", http::HeaderValue::from_static("5"));
                }
                Ok::<_, std::convert::Infallible>(response)
            },
        ));
        for path in [
            "/runtime.v1.RuntimeService/RunPodSandbox",
            "/runtime.v1.RuntimeService/RunPodSandbox",
            "/runtime.v1.RuntimeService/StopPodSandbox",
        ] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            svc.ready().await.unwrap().call(request).await.unwrap();
        }
        let text = metrics.encode(Scraped::default()).unwrap();
        for (series, want) in [
            (
                r#"vmlet_cri_requests_total{method="RunPodSandbox",code="OK"}"#,
                2.0,
            ),
            (
                r#"vmlet_cri_requests_total{method="StopPodSandbox",code="NotFound"}"#,
                1.0,
            ),
            (
                r#"vmlet_cri_request_duration_seconds_count{method="StopPodSandbox"}"#,
                1.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
    }
}
