//! Image limits: manifests, configs, unpacked bytes, entries and inodes over their caps
//! are refused with an error naming the cap, the pull leaves nothing behind, and the
//! scratch root of a flatten is reachable by root alone.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{assert_empty_state, manager_with_limits};
use serde_json::json;
use vmlet_agent::images::flatten::{build_rootfs, FlattenError, LayerBlob};
use vmlet_agent::images::pull::PullError;
use vmlet_agent::images::store::ContentStore;
use vmlet_agent::images::unpack::UnpackError;
use vmlet_agent::images::{Credentials, Digest, ImageError, ImageLimits};
use vmlet_test_support::{Compression, ImageBuilder, LayerBuilder, TestRegistry};

/// Pulls a one-layer image with these limits; returns the error and checks that the
/// failed pull left nothing behind.
async fn pull_err(image: ImageBuilder, limits: ImageLimits) -> ImageError {
    let registry = TestRegistry::start().expect("registry must start");
    let reference = registry
        .push(&image.build().unwrap(), "limits:latest")
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mgr = manager_with_limits(state.path(), &[registry.addr()], limits).await;
    let err = mgr
        .pull(&reference, &Credentials::default())
        .await
        .unwrap_err();
    assert!(mgr.list().is_empty());
    assert_empty_state(state.path());
    err
}

fn small_layer() -> Vec<u8> {
    LayerBuilder::new().file("a", b"a", 0o644).finish()
}

fn limit_key(e: &ImageError) -> &'static str {
    match e {
        ImageError::Pull {
            source: PullError::Limit { source, .. },
            ..
        } => source.key,
        ImageError::Flatten {
            source:
                FlattenError::Unpack {
                    source: UnpackError::Limit(l),
                    ..
                },
            ..
        } => l.key,
        other => panic!("not a limit error: {other}"),
    }
}

#[tokio::test]
async fn an_oversized_manifest_is_refused() {
    let image = ImageBuilder::new().layer(small_layer(), Compression::Gzip);
    let limits = ImageLimits {
        max_manifest_bytes: 64,
        ..ImageLimits::default()
    };
    let err = pull_err(image, limits).await;
    assert_eq!(limit_key(&err), "max_manifest_bytes");
    assert!(
        err.to_string().contains("images.max_manifest_bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_config_is_refused_before_download() {
    let image = ImageBuilder::new()
        .layer(small_layer(), Compression::Gzip)
        .config(json!({"Env": ["PAD=".to_owned() + &"x".repeat(100_000)]}));
    let limits = ImageLimits {
        max_config_bytes: 64 << 10,
        ..ImageLimits::default()
    };
    let err = pull_err(image, limits).await;
    assert_eq!(limit_key(&err), "max_config_bytes");
}

/// A zstd layer that unpacks to far more than it weighs stops at the byte cap.
#[tokio::test]
async fn a_zstd_bomb_stops_at_the_byte_cap() {
    let zeros = vec![0u8; 16 << 20];
    let layer = LayerBuilder::new().file("zeros", &zeros, 0o644).finish();
    let image = ImageBuilder::new().layer(layer, Compression::Zstd);
    let limits = ImageLimits {
        max_unpacked_bytes: 1 << 20,
        ..ImageLimits::default()
    };
    let err = pull_err(image, limits).await;
    assert_eq!(limit_key(&err), "max_unpacked_bytes");
    assert!(err.to_string().contains("unpacked size"), "{err}");
}

#[tokio::test]
async fn entry_and_inode_caps_count_across_layers() {
    let layer = |n: usize, prefix: &str| {
        (0..n)
            .fold(LayerBuilder::new(), |b, i| {
                b.file(&format!("{prefix}{i}"), b"", 0o644)
            })
            .finish()
    };
    // Each layer alone fits; together they do not.
    let image = || {
        ImageBuilder::new()
            .layer(layer(30, "a"), Compression::Gzip)
            .layer(layer(30, "b"), Compression::Gzip)
    };
    let err = pull_err(
        image(),
        ImageLimits {
            max_inodes: 50,
            ..ImageLimits::default()
        },
    )
    .await;
    assert_eq!(limit_key(&err), "max_inodes");
    let err = pull_err(
        image(),
        ImageLimits {
            max_entries: 50,
            ..ImageLimits::default()
        },
    )
    .await;
    assert_eq!(limit_key(&err), "max_entries");
}

/// The image's `./` entry makes its root 0755 and it carries a setuid-root program and
/// a device node: none of it may be reachable by other users while it is unpacked.
#[test]
fn the_scratch_root_is_private() {
    let layer = LayerBuilder::new()
        .dir("./", 0o755)
        .file("su", b"#!", 0o4755)
        .char_device("mem", 1, 1)
        .finish();
    let state = tempfile::tempdir().unwrap();
    let store = ContentStore::open(&state.path().join("content")).unwrap();
    let digest = Digest::of(&layer);
    store.put(&digest, &layer).unwrap();
    let tmp = state.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let blobs = [LayerBlob {
        digest,
        size: layer.len() as u64,
        verified: true,
    }];
    let root = build_rootfs(&store, &blobs, &tmp, &ImageLimits::default()).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode(root.path()),
        0o755,
        "the image's own root mode is kept"
    );
    assert_eq!(mode(&root.path().join("su")), 0o4755);
    // Every way in passes through a directory of root's alone.
    assert!(root.path().starts_with(root.guard_dir()));
    assert_eq!(mode(root.guard_dir()), 0o700);
    let meta = fs::metadata(root.guard_dir()).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
}

/// A registry that streams a manifest without end (chunked, no length announced) is
/// cut off at the cap: the manifest is never read whole.
#[tokio::test]
async fn an_endless_manifest_is_cut_off_at_the_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req).await;
                let head = "HTTP/1.1 200 OK\r\n\
                    Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("1000\r\n{}\r\n", " ".repeat(4096));
                // Until the client hangs up (or far past any sane manifest).
                for _ in 0..(1 << 18) {
                    if conn.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    counter.fetch_add(4096, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let state = tempfile::tempdir().unwrap();
    let limits = ImageLimits {
        max_manifest_bytes: 64 << 10,
        ..ImageLimits::default()
    };
    let mgr = manager_with_limits(state.path(), &[addr.as_str()], limits).await;
    let err = mgr
        .pull(&format!("{addr}/endless:latest"), &Credentials::default())
        .await
        .unwrap_err();
    assert_eq!(limit_key(&err), "max_manifest_bytes", "{err}");
    // The client stopped reading soon after the cap (socket buffers hold a few MiB).
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 64 << 20,
        "{sent} bytes were sent before the pull gave up"
    );
    assert_empty_state(state.path());
}
