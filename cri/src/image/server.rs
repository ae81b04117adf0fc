//! The gRPC ImageService over an [`ImageBackend`].
//!
//! CRI contracts kubelet relies on: `ImageStatus` of an unknown image returns an empty
//! response (not an error), and `RemoveImage` of an unknown image succeeds (removal is
//! idempotent). Everything else that finds nothing is `NotFound`.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::backend::{ErrorKind, ImageBackend};
use super::convert;
use crate::proto;
use crate::proto::image_service_server::{ImageService, ImageServiceServer};

/// The ImageService.
pub struct ImageServer<B> {
    backend: Arc<B>,
}

impl<B: ImageBackend> ImageServer<B> {
    /// A service over `backend`.
    pub fn new(backend: Arc<B>) -> Self {
        Self { backend }
    }

    /// The tonic service, ready to add to a server.
    pub fn into_service(self) -> ImageServiceServer<Self> {
        ImageServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl<B: ImageBackend> ImageService for ImageServer<B> {
    async fn list_images(
        &self,
        request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => self
                .backend
                .lookup(&name)
                .map_err(convert::status)?
                .into_iter()
                .collect(),
            None => self.backend.list(),
        };
        Ok(Response::new(proto::ListImagesResponse {
            images: images.into_iter().map(convert::image).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<proto::ImageStatusRequest>,
    ) -> Result<Response<proto::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = convert::required_image(req.image.as_ref())?;
        let Some(info) = self.backend.lookup(name).map_err(convert::status)? else {
            return Ok(Response::new(proto::ImageStatusResponse::default()));
        };
        let mut extra = HashMap::new();
        if req.verbose {
            extra.insert("info".to_string(), info.verbose_json.clone());
        }
        Ok(Response::new(proto::ImageStatusResponse {
            image: Some(convert::image(info)),
            info: extra,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<proto::PullImageResponse>, Status> {
        let req = request.into_inner();
        let name = convert::required_image(req.image.as_ref())?.to_string();
        let id = self
            .backend
            .pull(&name, convert::auth(req.auth))
            .await
            .map_err(convert::status)?;
        Ok(Response::new(proto::PullImageResponse { image_ref: id }))
    }

    async fn remove_image(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let name = convert::required_image(req.image.as_ref())?;
        match self.backend.remove(name).await {
            Ok(()) => Ok(Response::new(proto::RemoveImageResponse {})),
            Err(e) if e.kind == ErrorKind::NotFound => {
                Ok(Response::new(proto::RemoveImageResponse {}))
            }
            Err(e) => Err(convert::status(e)),
        }
    }

    async fn image_fs_info(
        &self,
        _request: Request<proto::ImageFsInfoRequest>,
    ) -> Result<Response<proto::ImageFsInfoResponse>, Status> {
        let usage = self.backend.fs_usage().map_err(convert::status)?;
        Ok(Response::new(proto::ImageFsInfoResponse {
            image_filesystems: vec![convert::fs_usage(usage)],
            container_filesystems: Vec::new(),
        }))
    }
}
