//! Server settings, with the reference implementation's defaults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A certificate chain and its key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// How the streaming server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (URLs carry the real one).
    pub addr: SocketAddr,
    /// Serve HTTPS with these files instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// How long a URL stays valid before its client connects.
    pub token_ttl: Duration,
    /// How long a client has to open all streams of a session (or both of a pair).
    pub stream_creation_timeout: Duration,
    /// A session with no frame read for this long is closed.
    pub stream_idle_timeout: Duration,
    /// Most concurrent sessions per container (exec/attach) or pod (port-forward).
    pub max_sessions_per_target: usize,
    /// Most concurrent sessions on the node.
    pub max_sessions: usize,
    /// Most URLs handed out and not used yet.
    pub max_pending: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            token_ttl: Duration::from_secs(30),
            stream_creation_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(4 * 3600),
            max_sessions_per_target: 32,
            max_sessions: 1024,
            max_pending: 1024,
        }
    }
}
