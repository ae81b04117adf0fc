//! The ImageService's CRI contracts over a fake backend, through a real tonic server on a
//! unix socket.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Endpoint, Server, Uri};
use tonic::Code;
use vmlet_cri::image::{
    BackendError, ErrorKind, FsUsage, ImageBackend, ImageInfo, ImageServer, PullAuth,
};
use vmlet_cri::proto::image_service_client::ImageServiceClient;
use vmlet_cri::proto::{
    AuthConfig, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};

/// Knows one image, `app:1` with ID `sha256:abc`; pulls of `denied` fail with
/// PermissionDenied, of `down` with Unavailable.
#[derive(Default)]
struct Fake {
    last_auth: Mutex<Option<PullAuth>>,
}

fn app() -> ImageInfo {
    ImageInfo {
        id: "sha256:abc".into(),
        repo_tags: vec!["docker.io/library/app:1".into()],
        size: 42,
        user: "nobody".into(),
        verbose_json: "{\"k\":1}".into(),
        ..Default::default()
    }
}

impl ImageBackend for Fake {
    fn list(&self) -> Vec<ImageInfo> {
        vec![app()]
    }

    fn lookup(&self, image: &str) -> Result<Option<ImageInfo>, BackendError> {
        Ok(["app:1", "sha256:abc", "abc"].contains(&image).then(app))
    }

    async fn pull(&self, image: &str, auth: PullAuth) -> Result<String, BackendError> {
        *self.last_auth.lock().unwrap() = Some(auth);
        match image {
            "denied" => Err(BackendError::new(ErrorKind::PermissionDenied, "no")),
            "down" => Err(BackendError::new(ErrorKind::Unavailable, "down")),
            _ => Ok("sha256:abc".into()),
        }
    }

    async fn remove(&self, image: &str) -> Result<(), BackendError> {
        match image {
            "busy" => Err(BackendError::new(ErrorKind::InUse, "in use")),
            "app:1" => Ok(()),
            _ => Err(BackendError::new(ErrorKind::NotFound, "none")),
        }
    }

    fn fs_usage(&self) -> Result<FsUsage, BackendError> {
        Ok(FsUsage {
            mountpoint: "/var/lib/vmlet/images".into(),
            used_bytes: 7,
            inodes_used: 3,
        })
    }
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn cri_contracts() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cri.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let backend = Arc::new(Fake::default());
    let server = tokio::spawn(
        Server::builder()
            .add_service(ImageServer::new(Arc::clone(&backend)).into_service())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?)) }
        }))
        .await
        .unwrap();
    let mut c = ImageServiceClient::new(channel);

    // Status: unknown → empty response; known → image with username, verbose info.
    let st = c
        .image_status(ImageStatusRequest {
            image: spec("nope"),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.image.is_none() && st.info.is_empty());
    let st = c
        .image_status(ImageStatusRequest {
            image: spec("abc"),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let img = st.image.unwrap();
    assert_eq!(
        (img.id.as_str(), img.username.as_str(), img.uid),
        ("sha256:abc", "nobody", None)
    );
    assert_eq!(st.info["info"], "{\"k\":1}");
    let err = c
        .image_status(ImageStatusRequest {
            image: None,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Pull: credentials pass through; errors keep their codes.
    let auth = AuthConfig {
        username: "u".into(),
        password: "p".into(),
        registry_token: "t".into(),
        ..Default::default()
    };
    let r = c
        .pull_image(PullImageRequest {
            image: spec("app:1"),
            auth: Some(auth),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.image_ref, "sha256:abc");
    let got = backend.last_auth.lock().unwrap().clone().unwrap();
    assert_eq!(
        (got.username.as_str(), got.registry_token.as_str()),
        ("u", "t")
    );
    for (name, code) in [
        ("denied", Code::PermissionDenied),
        ("down", Code::Unavailable),
    ] {
        let err = c
            .pull_image(PullImageRequest {
                image: spec(name),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{name}");
    }

    // Remove: unknown is fine (idempotent), in use is FailedPrecondition.
    c.remove_image(RemoveImageRequest {
        image: spec("app:1"),
    })
    .await
    .unwrap();
    c.remove_image(RemoveImageRequest {
        image: spec("gone"),
    })
    .await
    .unwrap();
    let err = c
        .remove_image(RemoveImageRequest {
            image: spec("busy"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let all = c
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.images.len(), 1);
    let fs = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let u = &fs.image_filesystems[0];
    assert_eq!(
        u.fs_id.as_ref().unwrap().mountpoint,
        "/var/lib/vmlet/images"
    );
    assert_eq!(
        (u.used_bytes.unwrap().value, u.inodes_used.unwrap().value),
        (7, 3)
    );

    server.abort();
}
