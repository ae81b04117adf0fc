//! The daemon: logging, the image manager and runtime, the CRI services on one unix
//! socket, the metrics endpoint if configured, and a clean exit on SIGTERM/SIGINT
//! that leaves the pods running.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use vmlet_cri::image::ImageServer;
use vmlet_cri::runtime::RuntimeServer;

use crate::config::Config;
use crate::images::{ImageError, ImageManager, ImageManagerConfig};
use crate::metrics::grpc::CallsLayer;
use crate::metrics::server::{Endpoint, MetricsError, Source};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeError, Settings};

/// How long calls in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The image manager could not open its state.
    #[error("images: {0}")]
    Images(#[from] ImageError),
    /// The runtime could not open its state.
    #[error("runtime: {0}")]
    Runtime(#[from] Box<RuntimeError>),
    /// The CRI socket could not be set up.
    #[error("CRI socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving the CRI: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The streaming server could not start.
    #[error("streaming server: {0}")]
    Streaming(#[from] vmlet_streaming::ServerError),
    /// The metrics endpoint could not start.
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] MetricsError),
    /// Signal handlers could not be installed.
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Sets up tracing: plain text to stderr, without colours or timestamps when stderr
/// is not a terminal (journald adds its own).
pub fn init_logging(level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal);
    let _ = if terminal {
        builder.try_init()
    } else {
        builder.without_time().try_init()
    };
}

/// Binds the CRI socket with `mode`, replacing a stale one.
fn bind(path: &Path, mode: u32) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another daemon serves it",
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let mut image_config = ImageManagerConfig::new(config.state_dir.join("images"));
    image_config.registries = config.registries.clone();
    image_config.limits = config.images;
    let metrics = Arc::new(Metrics::new());
    let images = Arc::new(
        ImageManager::open(image_config)
            .await?
            .with_metrics(metrics.clone()),
    );
    let cgroups = config.cgroups.settings();
    if config.cgroups.enabled && cgroups.root.is_none() {
        tracing::warn!(
            "no cgroup v2 hierarchy with the cpu, memory and pids controllers at {} \
             (a cgroup v1 or hybrid host): pods' VMMs run without a host cgroup, so the \
             host does not bound their memory, CPU or tasks; containers' limits still \
             hold inside each VM",
            crate::sandbox::cgroup::CGROUP_ROOT
        );
    }
    let runtime = Arc::new(
        Runtime::open(
            Settings {
                vmm: config.vmm.clone(),
                kernel: config.kernel.clone(),
                initramfs: config.initramfs.clone(),
                state_dir: config.state_dir.clone(),
                runtime_dir: config.runtime_dir.clone(),
                vm: config.vm.clone(),
                network: config.network.clone(),
                volumes: config.volumes.settings(),
                security: config.security.settings(),
                jail: config.jail.clone(),
                cgroups,
                runtimes: config.runtimes.clone(),
                metrics: metrics.clone(),
            },
            images.clone(),
        )
        .await
        .map_err(Box::new)?,
    );
    let streams =
        crate::streaming::Urls::start(config.streaming.server_config(), runtime.as_ref().clone())
            .await?;
    tracing::info!(addr = %streams.addr(), "streaming server listening");
    let _endpoint = match config.metrics.address {
        Some(addr) => {
            let rt = runtime.clone();
            let source: Source = Arc::new(move || {
                let rt = rt.clone();
                Box::pin(async move { rt.scrape().await })
            });
            let endpoint = Endpoint::start(addr, metrics.clone(), source).await?;
            tracing::info!(addr = %endpoint.addr(), "metrics endpoint listening");
            Some(endpoint)
        }
        None => None,
    };
    let listener = bind(&config.socket, config.socket_mode)?;
    tracing::info!(socket = %config.socket.display(), "serving the CRI");
    // Ready for a service manager once the socket answers (it is bound; the server
    // below accepts) and the pods of the last run are taken over again.
    let recovering = runtime.as_ref().clone();
    tokio::spawn(async move {
        recovering.recovered().await;
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving the CRI"),
        ]);
    });
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: exiting; pods keep running"),
            _ = int.recv() => tracing::info!("SIGINT: exiting; pods keep running"),
        }
        notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stopping_tx.send(());
    };
    let rt = runtime.clone();
    let server = tonic::transport::Server::builder()
        .layer(CallsLayer::new(metrics))
        .add_service(
            RuntimeServer::new(runtime)
                .with_streaming(streams)
                .into_service(),
        )
        .add_service(ImageServer::new(images).into_service())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    // Graceful shutdown waits for every connection to close, and kubelet never closes
    // its own: calls in flight get a grace period, then the daemon exits anyway.
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::info!("clients still connected after {SHUTDOWN_GRACE:?}: exiting"),
    }
    rt.shutdown().await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Tells systemd how the daemon stands (`Type=notify`); nothing when no service
/// manager asked (`NOTIFY_SOCKET` unset).
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}
