//! Errors of the runtime, and the CRI error kind each one is.

use vmlet_cri::image::{BackendError, ErrorKind};

use super::security::SecurityError;
use super::spec::SpecError;
use crate::images::ImageError;
use crate::logs::LogError;
use crate::network::pod::NetworkError;
use crate::sandbox::SandboxError;
use crate::store::StoreError;
use crate::volumes::{PlanError, VolumeError};

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such pod or container.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The call makes no sense in the current state.
    #[error("{0}")]
    Precondition(String),
    /// Did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// Image lookup failed.
    #[error("image {image:?}: {source}")]
    Image {
        /// As requested.
        image: String,
        /// Why.
        source: Box<ImageError>,
    },
    /// The request and image do not make a process.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The security context cannot be applied.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// VM failure.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Persisting state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Log file failure.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Pod networking failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A mount cannot reach the pod.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A volume could not be made in the guest.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The pod's host cgroup could not be made.
    #[error("the pod's cgroup: {0}")]
    Cgroup(#[from] crate::sandbox::cgroup::CgroupError),
    /// A warm VM failed the pod, and so did the fresh boot that replaced it.
    #[error("a warm VM failed ({warm}), and so did a fresh boot: {cold}")]
    WarmFallback {
        /// Why the warm VM failed.
        warm: Box<RuntimeError>,
        /// Why the fresh boot failed.
        cold: Box<RuntimeError>,
    },
    /// The task doing the work ended without an answer (it panicked).
    #[error("{0} was interrupted")]
    Interrupted(String),
    /// A template could not be made or read.
    #[error("templates: {0}")]
    Template(String),
    /// The guest refused or failed a call.
    #[error("guest {call}: {status}")]
    Guest {
        /// The call.
        call: &'static str,
        /// Its status.
        status: Box<tonic::Status>,
    },
}

impl RuntimeError {
    /// A guest call's failure.
    pub fn guest(call: &'static str) -> impl FnOnce(tonic::Status) -> RuntimeError {
        move |status| RuntimeError::Guest {
            call,
            status: Box::new(status),
        }
    }

    fn kind(&self) -> ErrorKind {
        use tonic::Code;
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::Invalid(_) | Self::Spec(_) | Self::Plan(_) | Self::Security(_) => {
                ErrorKind::InvalidArgument
            }
            Self::Volume(e) if e.code() == Code::InvalidArgument => ErrorKind::InvalidArgument,
            Self::Precondition(_) => ErrorKind::FailedPrecondition,
            Self::Timeout(_) => ErrorKind::DeadlineExceeded,
            Self::Image { source, .. } => match **source {
                ImageError::NotFound(_) => ErrorKind::NotFound,
                ImageError::InvalidReference(_) => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            },
            Self::Guest { status, .. } => match status.code() {
                Code::InvalidArgument => ErrorKind::InvalidArgument,
                Code::FailedPrecondition => ErrorKind::FailedPrecondition,
                Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
                Code::Unavailable => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            // The caller's problem, if any, is what the fresh boot met.
            Self::WarmFallback { cold, .. } => cold.kind(),
            Self::Network(e) if e.is_not_ready() => ErrorKind::FailedPrecondition,
            Self::Network(NetworkError::BadBandwidth { .. }) => ErrorKind::InvalidArgument,
            Self::Cgroup(crate::sandbox::cgroup::CgroupError::BadParent(_)) => {
                ErrorKind::InvalidArgument
            }
            Self::Sandbox(_)
            | Self::Volume(_)
            | Self::Store(_)
            | Self::Log(_)
            | Self::Network(_)
            | Self::Interrupted(_)
            | Self::Template(_)
            | Self::Cgroup(_) => ErrorKind::Internal,
        }
    }
}

impl From<RuntimeError> for BackendError {
    fn from(e: RuntimeError) -> Self {
        BackendError::new(e.kind(), e.to_string())
    }
}
