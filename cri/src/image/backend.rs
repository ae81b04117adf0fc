//! What the ImageService needs from the daemon.

use std::future::Future;

/// One image as the ImageService reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image ID (`sha256:<config digest>`).
    pub id: String,
    /// `registry/repo:tag` names.
    pub repo_tags: Vec<String>,
    /// `registry/repo@digest` names.
    pub repo_digests: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// The image config's `User` (`uid`, `uid:gid`, `name`, ...).
    pub user: String,
    /// Never garbage-collected by kubelet.
    pub pinned: bool,
    /// Details for verbose `ImageStatus`, as JSON.
    pub verbose_json: String,
}

/// Credentials of a pull, as in the CRI `AuthConfig`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PullAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// `base64(user:password)`.
    pub auth: String,
    /// The registry they are for.
    pub server_address: String,
    /// An identity token.
    pub identity_token: String,
    /// A registry bearer token.
    pub registry_token: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullAuth")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

/// Disk use of the image filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// Where the images are stored.
    pub mountpoint: String,
    /// Bytes used.
    pub used_bytes: u64,
    /// Inodes used.
    pub inodes_used: u64,
}

/// The kind of a backend failure; decides the gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such image (or tag/digest in the registry).
    NotFound,
    /// The request is malformed or the image unusable (bad reference, malicious layer).
    InvalidArgument,
    /// The image is used by a container.
    InUse,
    /// The registry cannot be reached.
    Unavailable,
    /// The registry refused the credentials.
    PermissionDenied,
    /// Content did not match its digest.
    DataLoss,
    /// A pod or container with the same name exists.
    AlreadyExists,
    /// The call makes no sense in the object's current state.
    FailedPrecondition,
    /// The operation did not finish within its deadline.
    DeadlineExceeded,
    /// The backend does not do this (yet).
    Unimplemented,
    /// The image is larger than the node's configured limits allow.
    ResourceExhausted,
    /// Anything else.
    Internal,
}

/// A backend failure with its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// What kind.
    pub kind: ErrorKind,
    /// The full message for the operator.
    pub message: String,
}

impl BackendError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The daemon's images, as the ImageService sees them. Lookups take what kubelet and
/// crictl send: an image ID, an ID prefix, a repo tag or a repo digest.
pub trait ImageBackend: Send + Sync + 'static {
    /// All images.
    fn list(&self) -> Vec<ImageInfo>;

    /// The image `image` names, if any.
    fn lookup(&self, image: &str) -> Result<Option<ImageInfo>, BackendError>;

    /// Pulls `image`; returns the image ID.
    fn pull(
        &self,
        image: &str,
        auth: PullAuth,
    ) -> impl Future<Output = Result<String, BackendError>> + Send;

    /// Removes the image `image` names ([`ErrorKind::NotFound`] if there is none).
    fn remove(&self, image: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Disk use of the image store.
    fn fs_usage(&self) -> Result<FsUsage, BackendError>;
}
