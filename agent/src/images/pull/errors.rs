//! Pull errors, and the sorting of registry client errors into them.

use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciManifest};

use super::blob::BlobRef;
use crate::images::limits::LimitExceeded;
use crate::images::store::StoreError;

/// Errors of a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry refused the credentials (or their absence).
    #[error("registry {registry} denied access: {message}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What it said.
        message: String,
    },
    /// The repository, tag or digest does not exist.
    #[error("{reference} not found: {message}")]
    NotFound {
        /// The reference.
        reference: String,
        /// What the registry said.
        message: String,
    },
    /// The registry could not be reached, or the connection broke mid-transfer.
    #[error("registry {registry} unreachable: {message}")]
    Unreachable {
        /// The registry host.
        registry: String,
        /// The transport error.
        message: String,
    },
    /// Content from the registry does not match its digest.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// An image index has no linux/amd64 image.
    #[error("{reference} has no linux/amd64 image")]
    NoPlatform {
        /// The reference.
        reference: String,
    },
    /// A manifest or blob is of a kind this runtime cannot use.
    #[error("unsupported content in {reference}: {reason}")]
    Unsupported {
        /// The reference.
        reference: String,
        /// What was wrong.
        reason: String,
    },
    /// Any other registry protocol error.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// The error.
        message: String,
    },
    /// The content store failed (including verification of what was written).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configured credentials are malformed.
    #[error("invalid credentials: {0}")]
    BadCredentials(String),
    /// A manifest or config is larger than the configured limits allow.
    #[error("{reference}: {source}")]
    Limit {
        /// The reference.
        reference: String,
        /// Which limit.
        source: LimitExceeded,
    },
}

/// What errors are reported against.
pub(super) struct Ctx {
    pub(super) registry: String,
    pub(super) reference: String,
}

impl Ctx {
    pub(super) fn unsupported(&self, reason: String) -> PullError {
        PullError::Unsupported {
            reference: self.reference.clone(),
            reason,
        }
    }

    /// Refuses `what` of `size` bytes when it is over `limit` (config key `key`).
    pub(super) fn cap(
        &self,
        what: &str,
        size: u64,
        limit: u64,
        key: &'static str,
    ) -> Result<(), PullError> {
        if size <= limit {
            return Ok(());
        }
        Err(self.limit(what, size, limit, key))
    }

    /// `what` of (at least) `size` bytes is over `limit` (config key `key`).
    pub(super) fn limit(&self, what: &str, size: u64, limit: u64, key: &'static str) -> PullError {
        PullError::Limit {
            reference: self.reference.clone(),
            source: LimitExceeded {
                what: format!("{what} of {size} bytes or more"),
                limit,
                key,
            },
        }
    }

    pub(super) fn unauthorized(&self, message: String) -> PullError {
        PullError::Unauthorized {
            registry: self.registry.clone(),
            message,
        }
    }

    pub(super) fn not_found(&self, message: String) -> PullError {
        PullError::NotFound {
            reference: self.reference.clone(),
            message,
        }
    }

    pub(super) fn registry(&self, message: String) -> PullError {
        PullError::Registry {
            registry: self.registry.clone(),
            message,
        }
    }

    /// A transport error of our own HTTP requests.
    pub(super) fn unreachable(&self, e: &reqwest::Error) -> PullError {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        PullError::Unreachable {
            registry: self.registry.clone(),
            message,
        }
    }

    pub(super) fn parse_manifest(&self, body: &[u8]) -> Result<OciManifest, PullError> {
        serde_json::from_slice(body).map_err(|e| self.unsupported(format!("manifest: {e}")))
    }

    pub(super) fn blob_ref(&self, d: &OciDescriptor) -> Result<BlobRef, PullError> {
        let digest = d
            .digest
            .parse()
            .map_err(|e| self.unsupported(format!("{e}")))?;
        let size = u64::try_from(d.size)
            .map_err(|_| self.unsupported(format!("negative size for {}", d.digest)))?;
        Ok(BlobRef { digest, size })
    }

    /// Sorts a registry client error into what an operator needs to know.
    pub(super) fn classify(&self, e: OciDistributionError) -> PullError {
        let unauthorized = |message: String| PullError::Unauthorized {
            registry: self.registry.clone(),
            message,
        };
        let not_found = |message: String| PullError::NotFound {
            reference: self.reference.clone(),
            message,
        };
        let unreachable = |message: String| PullError::Unreachable {
            registry: self.registry.clone(),
            message,
        };
        match e {
            OciDistributionError::AuthenticationFailure(m) => unauthorized(m),
            OciDistributionError::UnauthorizedError { url } => unauthorized(url),
            OciDistributionError::RegistryError { envelope, url } => {
                let message = format!("{url}: {envelope}");
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized(message)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found(message)
                } else {
                    PullError::Registry {
                        registry: self.registry.clone(),
                        message,
                    }
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                401 | 403 => unauthorized(format!("{url}: {message}")),
                404 => not_found(format!("{url}: {message}")),
                _ => PullError::Registry {
                    registry: self.registry.clone(),
                    message: format!("{url}: HTTP {code}: {message}"),
                },
            },
            OciDistributionError::ImageManifestNotFoundError(m) => not_found(m),
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => PullError::DigestMismatch { expected, actual },
            OciDistributionError::IoError(io) => {
                let inner = io.get_ref().and_then(|i| i.downcast_ref::<DigestError>());
                match inner {
                    Some(DigestError::VerificationError { expected, actual }) => {
                        PullError::DigestMismatch {
                            expected: expected.clone(),
                            actual: actual.clone(),
                        }
                    }
                    _ => unreachable(format!("transfer interrupted: {}", error_chain(&io))),
                }
            }
            OciDistributionError::RequestError(r) => unreachable(error_chain(&r)),
            e @ (OciDistributionError::UnsupportedMediaTypeError(_)
            | OciDistributionError::UnsupportedSchemaVersionError(_)
            | OciDistributionError::ManifestParsingError(_)
            | OciDistributionError::VersionedParsingError(_)) => self.unsupported(e.to_string()),
            other => PullError::Registry {
                registry: self.registry.clone(),
                message: other.to_string(),
            },
        }
    }
}

/// An error with its causes, `a: b: c`: transport errors hide the useful part
/// ("connection refused") in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}
