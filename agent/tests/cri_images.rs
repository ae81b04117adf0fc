//! The CRI ImageService end to end: a tonic server on a unix socket over the real image
//! manager, a tonic client, and a real local registry.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::Code;
use vmlet_cri::image::ImageServer;
use vmlet_cri::proto::image_service_client::ImageServiceClient;
use vmlet_cri::proto::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use vmlet_test_support::{busybox_image, TestRegistry};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn connect(path: std::path::PathBuf) -> ImageServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    ImageServiceClient::new(channel)
}

#[tokio::test]
async fn image_service_over_unix_socket() {
    let registry = TestRegistry::start_with_basic_auth("bob", "pw").expect("registry must start");
    let reference = registry
        .push(&busybox_image().unwrap(), "busybox:cri")
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let manager = Arc::new(common::manager(&state.path().join("images"), &[registry.addr()]).await);
    let lease_holder = Arc::clone(&manager);

    let sock = state.path().join("cri.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(ImageServer::new(manager).into_service())
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );
    let mut client = connect(sock.clone()).await;

    // Bad credentials, then good ones.
    let err = client
        .pull_image(PullImageRequest {
            image: spec(&reference),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let auth = Some(AuthConfig {
        username: "bob".into(),
        password: "pw".into(),
        ..Default::default()
    });
    let id = client
        .pull_image(PullImageRequest {
            image: spec(&reference),
            auth: auth.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert!(id.starts_with("sha256:"));

    let err = client
        .pull_image(PullImageRequest {
            image: spec(&format!("{}/busybox:missing", registry.addr())),
            auth,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = client
        .pull_image(PullImageRequest {
            image: spec("Bad Reference"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .pull_image(PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // List, with and without filters.
    let all = client
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.images.len(), 1);
    let img = &all.images[0];
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![reference.clone()]);
    assert!(img.size > 0);
    let filtered = |f: &str| ListImagesRequest {
        filter: Some(ImageFilter { image: spec(f) }),
    };
    for q in [reference.as_str(), &id, &id[7..19]] {
        let r = client.list_images(filtered(q)).await.unwrap().into_inner();
        assert_eq!(r.images.len(), 1, "filter {q}");
    }
    let none = client
        .list_images(filtered("nothing:here"))
        .await
        .unwrap()
        .into_inner();
    assert!(none.images.is_empty());

    // Status: by tag, digest and ID prefix; verbose info; unknown → empty response.
    for q in [
        reference.clone(),
        img.repo_digests[0].clone(),
        id[..19].to_string(),
    ] {
        let st = client
            .image_status(ImageStatusRequest {
                image: spec(&q),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            st.image.as_ref().map(|i| i.id.as_str()),
            Some(id.as_str()),
            "{q}"
        );
        assert!(st.info["info"].contains("blockImage"), "{:?}", st.info);
    }
    let st = client
        .image_status(ImageStatusRequest {
            image: spec("unknown:latest"),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.image.is_none());

    let fs = client
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().unwrap().value > 0);
    assert!(usage.fs_id.as_ref().unwrap().mountpoint.ends_with("images"));

    // In use → FailedPrecondition; after release it goes; unknown removal succeeds.
    let lease = lease_holder.lease(&id).unwrap();
    let err = client
        .remove_image(RemoveImageRequest { image: spec(&id) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    drop(lease);
    client
        .remove_image(RemoveImageRequest {
            image: spec(&reference),
        })
        .await
        .unwrap();
    client
        .remove_image(RemoveImageRequest {
            image: spec(&reference),
        })
        .await
        .unwrap();
    let all = client
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.images.is_empty());
    common::assert_empty_state(&state.path().join("images"));

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// An image over the node's limits reaches PullImage as ResourceExhausted, with a
/// message that names the limit to raise.
#[tokio::test]
async fn an_image_over_the_limits_is_resource_exhausted() {
    let registry = TestRegistry::start().expect("registry must start");
    let reference = registry
        .push(&busybox_image().unwrap(), "busybox:limits")
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let limits = vmlet_agent::images::ImageLimits {
        max_inodes: 3,
        ..Default::default()
    };
    let manager = Arc::new(
        common::manager_with_limits(&state.path().join("images"), &[registry.addr()], limits).await,
    );
    let sock = state.path().join("cri.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(
        Server::builder()
            .add_service(ImageServer::new(manager).into_service())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let mut client = connect(sock).await;
    let err = client
        .pull_image(PullImageRequest {
            image: spec(&reference),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("images.max_inodes"), "{err:?}");
    server.abort();
}
