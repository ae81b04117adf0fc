//! Listening unix sockets for the VMM's host-facing endpoints (control socket,
//! hybrid vsock): one way to claim a path, shared by all of them.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why a socket path cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another live process listens on the path.
    #[error("{0} is in use by a running listener")]
    InUse(PathBuf),
    /// Something other than a socket sits at the path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket cannot be created.
    #[error("binding {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Binds a non-blocking listener at `path`, readable and writable by its owner
/// only (mode 0600). A stale socket file (nobody listening) is replaced; a live
/// socket or any other file there is an error and left alone.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_owned())),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        },
        Ok(_) => return Err(BindError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_stale_and_foreign_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let live = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind(&path), Err(BindError::InUse(_))));
        drop(live);
        let _again = bind(&path).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(bind(&file), Err(BindError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
