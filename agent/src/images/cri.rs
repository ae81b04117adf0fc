//! The image manager as the CRI ImageService's backend: error kinds and record shapes.

use serde_json::json;
use vmlet_cri::image::{BackendError, ErrorKind, FsUsage, ImageBackend, ImageInfo, PullAuth};

use super::flatten::FlattenError;
use super::metadata::ImageRecord;
use super::pull::{Credentials, PullError};
use super::service::{ImageError, ImageManager};
use super::store::StoreError;
use super::unpack::UnpackError;

/// Sorts an image error into the kind the CRI reports; the message keeps the detail.
fn kind(e: &ImageError) -> ErrorKind {
    match e {
        ImageError::InvalidReference(_) => ErrorKind::InvalidArgument,
        ImageError::NotFound(_) => ErrorKind::NotFound,
        ImageError::InUse { .. } => ErrorKind::InUse,
        ImageError::Pull { source, .. } => match source {
            PullError::Unauthorized { .. } => ErrorKind::PermissionDenied,
            PullError::NotFound { .. } => ErrorKind::NotFound,
            PullError::Unreachable { .. } | PullError::Registry { .. } => ErrorKind::Unavailable,
            PullError::DigestMismatch { .. }
            | PullError::Store(
                StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. },
            ) => ErrorKind::DataLoss,
            PullError::NoPlatform { .. }
            | PullError::Unsupported { .. }
            | PullError::BadCredentials(_) => ErrorKind::InvalidArgument,
            PullError::Store(_) => ErrorKind::Internal,
            PullError::Limit { .. } => ErrorKind::ResourceExhausted,
        },
        ImageError::Flatten { source, .. } => match source {
            FlattenError::Store {
                source: StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. },
                ..
            } => ErrorKind::DataLoss,
            FlattenError::Unpack {
                source:
                    UnpackError::PathEscape { .. } | UnpackError::Invalid { .. } | UnpackError::Tar(_),
                ..
            }
            | FlattenError::Decompress { .. } => ErrorKind::InvalidArgument,
            FlattenError::Unpack {
                source: UnpackError::Limit(_),
                ..
            } => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        },
        ImageError::BadConfig { .. } => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    }
}

fn backend_error(e: ImageError) -> BackendError {
    BackendError::new(kind(&e), e.to_string())
}

fn info(manager: &ImageManager, r: ImageRecord) -> ImageInfo {
    let block = manager.block_image(r.id.as_str()).ok().map(|b| b.path);
    let verbose = json!({
        "id": r.id,
        "manifests": r.manifests,
        "config": r.config,
        "layers": r.layers,
        "blockImage": block,
    });
    ImageInfo {
        id: r.id.to_string(),
        repo_tags: r.repo_tags,
        repo_digests: r.repo_digests,
        size: r.size,
        user: r.config.user,
        pinned: false,
        verbose_json: verbose.to_string(),
    }
}

impl ImageBackend for ImageManager {
    fn list(&self) -> Vec<ImageInfo> {
        ImageManager::list(self)
            .into_iter()
            .map(|r| info(self, r))
            .collect()
    }

    fn lookup(&self, image: &str) -> Result<Option<ImageInfo>, BackendError> {
        Ok(self.status(image).map(|r| info(self, r)))
    }

    async fn pull(&self, image: &str, auth: PullAuth) -> Result<String, BackendError> {
        let creds = Credentials {
            username: auth.username,
            password: auth.password,
            auth: auth.auth,
            server_address: auth.server_address,
            identity_token: auth.identity_token,
            registry_token: auth.registry_token,
        };
        ImageManager::pull(self, image, &creds)
            .await
            .map(|o| o.image.id.to_string())
            .map_err(backend_error)
    }

    async fn remove(&self, image: &str) -> Result<(), BackendError> {
        ImageManager::remove(self, image)
            .await
            .map_err(backend_error)
    }

    fn fs_usage(&self) -> Result<FsUsage, BackendError> {
        let u = ImageManager::fs_usage(self).map_err(backend_error)?;
        Ok(FsUsage {
            mountpoint: self.state_dir().display().to_string(),
            used_bytes: u.used_bytes,
            inodes_used: u.inodes_used,
        })
    }
}
