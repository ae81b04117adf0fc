//! Pulls from a real local registry (Debian's docker-registry): content of the flattened
//! erofs image, manifests of every kind, auth, lookups.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::{manager, Mounted};
use serde_json::json;
use vmlet_agent::images::pull::PullError;
use vmlet_agent::images::{Credentials, ImageError};
use vmlet_agent::metrics::Metrics;
use vmlet_test_support::{busybox_image, Compression, ImageBuilder, LayerBuilder, TestRegistry};

#[tokio::test]
async fn busybox_pull_flattens_to_erofs() {
    let registry = TestRegistry::start().expect("registry must start");
    let image = busybox_image().unwrap();
    let reference = registry.push(&image, "busybox:1").unwrap();
    let state = tempfile::tempdir().unwrap();
    let metrics = std::sync::Arc::new(Metrics::new());
    let mgr = manager(state.path(), &[registry.addr()])
        .await
        .with_metrics(metrics.clone());

    let out = mgr.pull(&reference, &Credentials::default()).await.unwrap();
    let rec = &out.image;
    assert_eq!(rec.id.as_str(), image.config_digest);
    assert_eq!(
        rec.repo_tags,
        vec![format!("{}/busybox:1", registry.addr())]
    );
    assert_eq!(
        rec.repo_digests,
        vec![format!(
            "{}/busybox@{}",
            registry.addr(),
            image.manifest_digest
        )]
    );
    assert_eq!(rec.config.cmd, vec!["sh"]);
    assert!(rec.config.env[0].starts_with("PATH="));
    assert!(out.flattened);
    assert_eq!(out.blobs_downloaded, 2);
    // The config and the layer: the image's size.
    assert_eq!(out.bytes_downloaded, rec.size);

    // Lookups as containerd does them.
    let hex = rec.id.hex();
    for q in [
        rec.id.as_str().to_string(),
        hex.to_string(),
        hex[..12].to_string(),
        format!("sha256:{}", &hex[..12]),
        reference.clone(),
        rec.repo_digests[0].clone(),
    ] {
        assert_eq!(
            mgr.status(&q).map(|r| r.id),
            Some(rec.id.clone()),
            "lookup {q}"
        );
    }
    assert!(mgr
        .status(&format!("{}/busybox:2", registry.addr()))
        .is_none());

    let block = mgr.block_image(&reference).unwrap();
    assert_eq!(block.id, rec.id);
    assert_eq!(block.config, rec.config);
    let mnt = Mounted::new(&block.path);
    let bb = fs::read(mnt.path().join("bin/busybox")).unwrap();
    assert_eq!(bb, fs::read("/bin/busybox").unwrap());
    assert_eq!(
        fs::read_link(mnt.path().join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let tmp = fs::symlink_metadata(mnt.path().join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);

    // A second pull reuses everything.
    let again = mgr.pull(&reference, &Credentials::default()).await.unwrap();
    assert_eq!(again.blobs_downloaded, 0);
    assert_eq!(again.bytes_downloaded, 0);
    assert!(!again.flattened);
    let text = metrics.encode(Default::default()).unwrap();
    for line in [
        "vmlet_image_pulls_total{result=\"ok\"} 2".to_owned(),
        format!("vmlet_image_pull_bytes_total {}", rec.size),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

/// Three layers (gzip, zstd, plain) with whiteouts, an opaque directory, hard links,
/// owners, an xattr and a device node, pushed as a multi-platform index.
#[tokio::test]
async fn multi_layer_index_applies_whiteouts_and_keeps_links() {
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/removed", b"gone", 0o644)
        .file("etc/kept", b"kept", 0o600)
        .dir("data", 0o755)
        .file("data/old1", b"1", 0o644)
        .dir("data/olddir", 0o755)
        .file("data/olddir/x", b"x", 0o644)
        .dir("gone-dir", 0o755)
        .file("gone-dir/y", b"y", 0o644)
        .file_owned("home-file", b"owned", 0o4750, 1000, 1001)
        .finish();
    let middle = LayerBuilder::new()
        .whiteout("etc/removed")
        .whiteout("gone-dir")
        .file("data/new-before", b"nb", 0o644)
        .opaque("data")
        .file("data/new-after", b"na", 0o644)
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .hardlink("bin/tool-link", "bin/tool")
        .hardlink("bin/tool-link2", "./bin/tool")
        .finish();
    let top = LayerBuilder::new()
        .file_with_xattr("xattr-file", b"x", "user.vmlet", b"yes")
        .dir("dev", 0o755)
        .char_device("dev/null", 1, 3)
        .symlink("etc/link", "/etc/kept")
        .finish();
    let image = ImageBuilder::new()
        .layer(base, Compression::Gzip)
        .layer(middle, Compression::Zstd)
        .layer(top, Compression::None)
        .config(json!({
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["--flag"],
            "Env": ["A=1", "B=2"],
            "WorkingDir": "/data",
            "User": "1000:1001",
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"org.example": "yes"},
            "StopSignal": "SIGQUIT",
        }))
        .build_index()
        .unwrap();

    let registry = TestRegistry::start().expect("registry must start");
    let reference = registry.push(&image, "multi:v1").unwrap();
    let state = tempfile::tempdir().unwrap();
    let mgr = manager(state.path(), &[registry.addr()]).await;
    let out = mgr.pull(&reference, &Credentials::default()).await.unwrap();

    // The amd64 image of the index, recorded under the index digest.
    assert_eq!(out.image.id.as_str(), image.config_digest);
    // skopeo re-serializes manifests when pushing an index, so digests are the registry's.
    assert!(image.index_digest.is_some());
    let manifests = &out.image.manifests;
    assert_eq!(manifests.len(), 2, "index and amd64 manifest");
    assert_ne!(manifests[0].digest, manifests[1].digest);
    assert_eq!(
        out.image.repo_digests,
        vec![format!("{}/multi@{}", registry.addr(), manifests[0].digest)]
    );
    let c = &out.image.config;
    assert_eq!(c.entrypoint, vec!["/bin/tool"]);
    assert_eq!(c.cmd, vec!["--flag"]);
    assert_eq!(c.env, vec!["A=1", "B=2"]);
    assert_eq!(c.working_dir, "/data");
    assert_eq!(c.user, "1000:1001");
    assert_eq!(c.exposed_ports, vec!["80/tcp"]);
    assert_eq!(c.volumes, vec!["/data"]);
    assert_eq!(c.labels.get("org.example").map(String::as_str), Some("yes"));
    assert_eq!(c.stop_signal, "SIGQUIT");

    let block = mgr.block_image(&out.image.id.to_string()).unwrap();
    let mnt = Mounted::new(&block.path);
    let root = mnt.path();
    assert!(!root.join("etc/removed").exists(), "whiteout not applied");
    assert!(
        !root.join("gone-dir").exists(),
        "directory whiteout not applied"
    );
    assert_eq!(fs::read(root.join("etc/kept")).unwrap(), b"kept");
    let mut data: Vec<String> = fs::read_dir(root.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    assert_eq!(data, vec!["new-after", "new-before"], "opaque directory");
    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    let link = fs::metadata(root.join("bin/tool-link")).unwrap();
    let link2 = fs::metadata(root.join("bin/tool-link2")).unwrap();
    assert_eq!(tool.ino(), link.ino(), "hard link kept");
    assert_eq!(tool.ino(), link2.ino(), "hard link kept");
    assert_eq!(tool.nlink(), 3);
    assert_eq!(tool.mode() & 0o7777, 0o755);
    let owned = fs::metadata(root.join("home-file")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1001));
    assert_eq!(owned.mode() & 0o7777, 0o4750, "set-uid kept after chown");
    assert_eq!(
        fs::symlink_metadata(root.join("etc/kept")).unwrap().mode() & 0o777,
        0o600
    );
    let dev = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix_makedev(1, 3));
    assert_eq!(
        fs::read_link(root.join("etc/link")).unwrap().to_str(),
        Some("/etc/kept")
    );
    assert_eq!(
        read_xattr(&root.join("xattr-file"), "user.vmlet"),
        Some(b"yes".to_vec())
    );
}

fn nix_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
}

fn read_xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer whose pointer and length are passed together.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

#[tokio::test]
async fn docker_schema2_manifest() {
    let registry = TestRegistry::start().expect("registry must start");
    let image = busybox_image().unwrap();
    let reference = registry
        .push_docker_schema2(&image, "busybox-v2s2:latest")
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mgr = manager(state.path(), &[registry.addr()]).await;
    let out = mgr.pull(&reference, &Credentials::default()).await.unwrap();
    assert_eq!(out.image.id.as_str(), image.config_digest);
    let manifest = fs::read(mgr.store().path(&out.image.manifests[0].digest)).unwrap();
    assert!(String::from_utf8_lossy(&manifest)
        .contains("application/vnd.docker.distribution.manifest.v2+json"));
    assert!(mgr.block_image(&reference).unwrap().path.is_file());
}

#[tokio::test]
async fn basic_auth_and_registry_errors() {
    let registry =
        TestRegistry::start_with_basic_auth("alice", "s3cret").expect("registry must start");
    let reference = registry
        .push(&busybox_image().unwrap(), "private:latest")
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mgr = manager(state.path(), &[registry.addr(), "127.0.0.1:1"]).await;

    let err = mgr
        .pull(&reference, &Credentials::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Pull {
                source: PullError::Unauthorized { .. },
                ..
            }
        ),
        "{err}"
    );
    let wrong = Credentials {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = mgr.pull(&reference, &wrong).await.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Pull {
                source: PullError::Unauthorized { .. },
                ..
            }
        ),
        "{err}"
    );
    let right = Credentials {
        auth: "YWxpY2U6czNjcmV0".into(), // base64("alice:s3cret")
        ..Default::default()
    };
    mgr.pull(&reference, &right).await.unwrap();

    let missing = format!("{}/private:nope", registry.addr());
    let err = mgr.pull(&missing, &right).await.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Pull {
                source: PullError::NotFound { .. },
                ..
            }
        ),
        "{err}"
    );
    let err = mgr
        .pull("127.0.0.1:1/nothing:latest", &Credentials::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Pull {
                source: PullError::Unreachable { .. },
                ..
            }
        ),
        "{err}"
    );
    let err = mgr
        .pull("Not A Reference", &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference(_)), "{err}");
}

#[tokio::test]
async fn token_auth_with_password_registry_token_and_identity_token() {
    let registry = TestRegistry::start_with_token_auth("carol", "pw").expect("registry must start");
    let reference = registry
        .push(&busybox_image().unwrap(), "tokened:latest")
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mgr = manager(state.path(), &[registry.addr()]).await;

    let err = mgr
        .pull(&reference, &Credentials::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Pull {
                source: PullError::Unauthorized { .. },
                ..
            }
        ),
        "{err}"
    );
    let password = Credentials {
        username: "carol".into(),
        password: "pw".into(),
        ..Default::default()
    };
    let first = mgr.pull(&reference, &password).await.unwrap();
    mgr.remove(&reference).await.unwrap();

    // A bearer token handed over as is (CRI registry_token).
    let token = Credentials {
        registry_token: registry.issue_token("tokened").unwrap(),
        ..Default::default()
    };
    let second = mgr.pull(&reference, &token).await.unwrap();
    assert_eq!(first.image.id, second.image.id);
    assert_eq!(second.blobs_downloaded, 2);
    mgr.remove(&reference).await.unwrap();

    // An identity token, exchanged at the realm with the OAuth2 refresh-token grant.
    let identity = Credentials {
        identity_token: registry.identity_token().unwrap(),
        ..Default::default()
    };
    let third = mgr.pull(&reference, &identity).await.unwrap();
    assert_eq!(third.image.id, first.image.id);
    let wrong = Credentials {
        identity_token: "not-it".into(),
        ..Default::default()
    };
    let err = mgr
        .pull(&format!("{}/tokened:other", registry.addr()), &wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Pull {
                source: PullError::Unauthorized { .. },
                ..
            }
        ),
        "{err}"
    );
}

/// `busybox` means docker.io/library/busybox:latest; a dead mirror is skipped and the
/// local registry, configured as a docker.io mirror, serves it (no internet needed).
#[tokio::test]
async fn docker_hub_names_through_mirrors() {
    use std::collections::HashMap;
    use vmlet_agent::images::{ImageManager, ImageManagerConfig, RegistriesConfig, RegistryHost};

    let registry = TestRegistry::start().expect("registry must start");
    registry
        .push(&busybox_image().unwrap(), "library/busybox:latest")
        .unwrap();
    let plain = RegistryHost {
        plain_http: true,
        ..Default::default()
    };
    let hosts = HashMap::from([
        (
            "docker.io".to_string(),
            RegistryHost {
                mirrors: vec!["127.0.0.1:1".to_string(), registry.addr().to_string()],
                ..Default::default()
            },
        ),
        ("127.0.0.1:1".to_string(), plain.clone()),
        (registry.addr().to_string(), plain),
    ]);
    let state = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mgr = ImageManager::open(ImageManagerConfig {
        state_dir: state.path().to_path_buf(),
        registries: RegistriesConfig { hosts },
        scratch_dir: Some(scratch.path().to_path_buf()),
        limits: Default::default(),
    })
    .await
    .unwrap();
    let out = mgr.pull("busybox", &Credentials::default()).await.unwrap();
    assert_eq!(
        out.image.repo_tags,
        vec!["docker.io/library/busybox:latest"]
    );
    assert!(out.image.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    for q in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox:latest",
    ] {
        assert!(mgr.status(q).is_some(), "{q}");
    }
    // The scratch root went to the configured place and is gone.
    assert_eq!(
        fs::read_dir(scratch.path().join("vmlet-flatten"))
            .unwrap()
            .count(),
        0
    );
    assert!(mgr.block_image("busybox").unwrap().path.is_file());
}
