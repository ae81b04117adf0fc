//! Builders for OCI image layouts (tar layers + JSON + sha256), written by hand here
//! because the fixture must also produce layers no well-behaved tool writes (path escapes,
//! whiteouts, device nodes) and must not depend on a container engine.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};
use tempfile::TempDir;

use crate::error::FixtureError;

/// How a layer is compressed in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Builds one tar layer, entry by entry.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry whose path (and link target) bytes are written verbatim: the tar
    /// crate's checked setters refuse `..` and absolute paths, which malicious-layer tests
    /// need. Both must be under 100 bytes.
    pub fn raw(
        mut self,
        kind: EntryType,
        path: &[u8],
        link: &[u8],
        data: &[u8],
        mode: u32,
    ) -> Self {
        let mut h = header(kind, mode, data.len() as u64);
        if let Some(old) = h.as_old_mut().name.get_mut(..path.len()) {
            old.copy_from_slice(path);
        }
        if let Some(old) = h.as_old_mut().linkname.get_mut(..link.len()) {
            old.copy_from_slice(link);
        }
        h.set_cksum();
        // Appending to a Vec cannot fail.
        let _ = self.tar.append(&h, data);
        self
    }

    /// A directory.
    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.raw(EntryType::Directory, path.as_bytes(), b"", b"", mode)
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// A regular file with an owner.
    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        let _ = self.tar.append_data(&mut h, path, data);
        self
    }

    /// A regular file with one extended attribute (PAX `SCHILY.xattr.*`).
    pub fn file_with_xattr(mut self, path: &str, data: &[u8], name: &str, value: &[u8]) -> Self {
        let key = format!("SCHILY.xattr.{name}");
        let _ = self.tar.append_pax_extensions([(key.as_str(), value)]);
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        let _ = self.tar.append_data(&mut h, path, data);
        self
    }

    /// A symlink.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(
            EntryType::Symlink,
            path.as_bytes(),
            target.as_bytes(),
            b"",
            0o777,
        )
    }

    /// A hard link to an earlier entry.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(
            EntryType::Link,
            path.as_bytes(),
            target.as_bytes(),
            b"",
            0o644,
        )
    }

    /// A character device.
    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = header(EntryType::Char, 0o666, 0);
        let _ = h.set_device_major(major);
        let _ = h.set_device_minor(minor);
        let _ = self.tar.append_data(&mut h, path, &[][..]);
        self
    }

    /// A whiteout deleting `path` of lower layers.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"", 0o644)
    }

    /// An opaque marker: `dir` shows nothing of lower layers.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// The finished tar stream.
    pub fn finish(self) -> Vec<u8> {
        self.tar.into_inner().unwrap_or_default()
    }
}

/// An image in an OCI layout directory, ready to push.
pub struct OciImage {
    dir: TempDir,
    tag: String,
    index: bool,
    /// The linux/amd64 image manifest's digest.
    pub manifest_digest: String,
    /// The digest of the index, for a multi-platform image.
    pub index_digest: Option<String>,
    /// The config digest: the image ID.
    pub config_digest: String,
    /// Layer blob digests, bottom first.
    pub layer_digests: Vec<String>,
}

impl OciImage {
    /// The layout directory.
    pub fn layout_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tag inside the layout.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the layout holds an index (multi-platform image).
    pub fn is_index(&self) -> bool {
        self.index
    }
}

/// Builds an image: layers plus the config section of the image config.
pub struct ImageBuilder {
    layers: Vec<(Vec<u8>, Compression)>,
    config: Value,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The hex sha256 of `data` (the blob's file name in an OCI layout).
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write_blob(dir: &Path, data: &[u8]) -> Result<String, FixtureError> {
    let hex = sha256_hex(data);
    fs::write(dir.join("blobs/sha256").join(&hex), data)?;
    Ok(format!("sha256:{hex}"))
}

impl ImageBuilder {
    /// No layers, empty config.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            config: json!({}),
        }
    }

    /// Adds a layer on top.
    pub fn layer(mut self, tar: Vec<u8>, compression: Compression) -> Self {
        self.layers.push((tar, compression));
        self
    }

    /// Sets the `config` section (`Entrypoint`, `Cmd`, `Env`, ...).
    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    fn write_image(
        &self,
        dir: &Path,
        arch: &str,
    ) -> Result<(String, usize, String, Vec<String>), FixtureError> {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        for (tar, comp) in &self.layers {
            diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
            let (data, media) = match comp {
                Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Compression::Gzip => {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(tar)?;
                    (enc.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
                }
                Compression::Zstd => (
                    zstd::encode_all(&tar[..], 3)?,
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            let digest = write_blob(dir, &data)?;
            layer_descs.push(json!({"mediaType": media, "digest": digest, "size": data.len()}));
            layer_digests.push(digest);
        }
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
        let config_digest = write_blob(dir, &config_bytes)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layer_descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
        let manifest_digest = write_blob(dir, &manifest_bytes)?;
        Ok((
            manifest_digest,
            manifest_bytes.len(),
            config_digest,
            layer_digests,
        ))
    }

    fn layout(&self, tag: &str, multi_platform: bool) -> Result<OciImage, FixtureError> {
        let dir = tempfile::Builder::new().prefix("vmlet-oci-").tempdir()?;
        fs::create_dir_all(dir.path().join("blobs/sha256"))?;
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let (manifest_digest, manifest_size, config_digest, layer_digests) =
            self.write_image(dir.path(), "amd64")?;
        let amd64 = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
        });
        let (top, index_digest) = if multi_platform {
            // A decoy arm64 image listed first: the puller must pick amd64.
            let (arm_digest, arm_size, _, _) = self.write_image(dir.path(), "arm64")?;
            let index = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": arm_digest,
                        "size": arm_size,
                        "platform": {"architecture": "arm64", "os": "linux"},
                    },
                    amd64,
                ],
            });
            let bytes = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
            let digest = write_blob(dir.path(), &bytes)?;
            (
                json!({
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": digest,
                    "size": bytes.len(),
                }),
                Some(digest),
            )
        } else {
            (amd64, None)
        };
        let mut top = top;
        top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [top]});
        fs::write(
            dir.path().join("index.json"),
            serde_json::to_vec(&index).map_err(std::io::Error::other)?,
        )?;
        Ok(OciImage {
            dir,
            tag: tag.to_string(),
            index: multi_platform,
            manifest_digest,
            index_digest,
            config_digest,
            layer_digests,
        })
    }

    /// Writes a single-platform (linux/amd64) image layout.
    pub fn build(&self) -> Result<OciImage, FixtureError> {
        self.layout("latest", false)
    }

    /// Writes an image index with a linux/arm64 decoy and the linux/amd64 image.
    pub fn build_index(&self) -> Result<OciImage, FixtureError> {
        self.layout("latest", true)
    }
}

/// Commands the busybox image links to the binary.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "env", "ps", "mount",
];

/// A one-layer busybox image from Debian's `busybox-static`: `/bin/busybox`, applet
/// symlinks in `/bin`, `Cmd ["sh"]`.
pub fn busybox_image() -> Result<OciImage, FixtureError> {
    busybox_image_with(json!({
        "Cmd": ["sh"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    }))
}

/// The busybox image with image config `config` (e.g. a pause image: `Cmd` a long
/// sleep).
pub fn busybox_image_with(config: Value) -> Result<OciImage, FixtureError> {
    ImageBuilder::new()
        .layer(busybox_layer()?, Compression::Gzip)
        .config(config)
        .build()
}

/// The busybox image's one layer, as a tar.
fn busybox_layer() -> Result<Vec<u8>, FixtureError> {
    let busybox = fs::read("/bin/busybox").map_err(|e| FixtureError::Command {
        cmd: "read /bin/busybox".into(),
        message: format!("{e} (install busybox-static: scripts/setup.sh)"),
    })?;
    let mut layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("tmp", 0o1777)
        .dir("root", 0o700);
    for applet in BUSYBOX_APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(layer.finish())
}

/// The busybox image with image config `config` and a second layer of programs
/// (path, content; mode 0755), e.g. a benchmark's static binary.
pub fn busybox_image_with_programs(
    config: Value,
    programs: &[(&str, &[u8])],
) -> Result<OciImage, FixtureError> {
    let mut layer = LayerBuilder::new();
    for (path, content) in programs {
        layer = layer.file(path, content, 0o755);
    }
    ImageBuilder::new()
        .layer(busybox_layer()?, Compression::Gzip)
        .layer(layer.finish(), Compression::Gzip)
        .config(config)
        .build()
}

/// The busybox image with image config `config` and a second layer of regular
/// files (path, content), e.g. an `/etc/passwd` and `/etc/group` of its own.
pub fn busybox_image_with_files(
    config: Value,
    files: &[(&str, &[u8])],
) -> Result<OciImage, FixtureError> {
    let mut layer = LayerBuilder::new();
    for (path, content) in files {
        layer = layer.file(path, content, 0o644);
    }
    ImageBuilder::new()
        .layer(busybox_layer()?, Compression::Gzip)
        .layer(layer.finish(), Compression::Gzip)
        .config(config)
        .build()
}
