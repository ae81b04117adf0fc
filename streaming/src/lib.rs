//! The CRI streaming server: serves the URLs that CRI `Exec`, `Attach` and
//! `PortForward` return, speaking SPDY/3.1 and WebSocket to kubelet, kubectl and
//! crictl, and handing plain byte streams to a [`StreamBackend`]. It knows nothing
//! of how the runtime runs containers.

mod backend;
mod config;
mod handler;
mod limits;
mod portforward;
mod remotecommand;
mod request;
mod resize;
mod server;
mod spdy;
mod status;
mod token;
mod ws;

pub use backend::{
    BackendError, ExecStreams, ExitStatus, Output, PortStream, Stdin, StreamBackend, TerminalSize,
};
pub use config::{Config, TlsFiles};
pub use limits::LimitError;
pub use request::{AttachRequest, ExecRequest, PortForwardRequest, RequestError};
pub use server::{ServerError, StreamingServer};
pub use url::Url;
