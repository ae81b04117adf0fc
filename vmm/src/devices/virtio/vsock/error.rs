//! Why the vsock device could not be created.

use std::path::PathBuf;

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or out of the 32-bit range guests use.
    #[error("invalid guest CID {0} (must be 3..=0xfffffffe)")]
    InvalidCid(u64),
    /// Another live process listens on the socket path.
    #[error("{0} is in use by a running listener")]
    InUse(PathBuf),
    /// Something other than a socket sits at the socket path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding the listener failed.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Creating a queue eventfd failed.
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    /// Creating the timeout timer failed.
    #[error("creating the timeout timer: {0}")]
    Timer(std::io::Error),
}

impl From<crate::uds::BindError> for VsockError {
    fn from(e: crate::uds::BindError) -> Self {
        use crate::uds::BindError;
        match e {
            BindError::InUse(p) => VsockError::InUse(p),
            BindError::NotASocket(p) => VsockError::NotASocket(p),
            BindError::Io { path, source } => VsockError::Bind { path, source },
        }
    }
}
