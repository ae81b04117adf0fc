//! Flattening: applies an image's layers in order onto a scratch root, then packs the
//! root into one read-only erofs image with Debian's `mkfs.erofs`. Every pod using the
//! image then shares that one file through the host page cache.
//!
//! The scratch root and the half-written image live in temporary paths; only the finished,
//! synced image is renamed to its final name, so a crash leaves nothing half-visible.
//!
//! The scratch root holds whatever the image carries, setuid-root programs and device
//! nodes included, with the owners and modes the image gives them (the image's `./`
//! entry may even make the root itself world-readable). So it sits one level down in a
//! directory of root's alone (0700): no other local user can reach anything in it.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::digest::Digest;
use super::limits::ImageLimits;
use super::store::{sync_dir, ContentStore, StoreError};
use super::unpack::{UnpackError, Unpacker};

/// The tool that builds block images.
const MKFS_EROFS: &str = "mkfs.erofs";

/// Errors while flattening an image.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// A layer blob is missing or failed verification.
    #[error("layer {layer}: {source}")]
    Store {
        /// The layer.
        layer: Digest,
        /// The cause.
        source: StoreError,
    },
    /// A layer could not be applied (including path escapes).
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer.
        layer: Digest,
        /// The cause.
        source: UnpackError,
    },
    /// The layer's compressed stream is corrupt.
    #[error("layer {layer}: decompressing: {source}")]
    Decompress {
        /// The layer.
        layer: Digest,
        /// The cause.
        source: io::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// mkfs.erofs failed or is missing.
    #[error("mkfs.erofs: {0}")]
    Mkfs(String),
}

/// A layer to apply: its blob in the store.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The compressed (or plain) blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Whether its digest and size were checked moments ago (downloaded by this pull);
    /// otherwise it is verified again before use.
    pub verified: bool,
}

/// How a layer blob is compressed, told by its first bytes: media types are not
/// reliable (Docker's schema2 types say gzip for zstd layers written by some tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    None,
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Applies one layer blob onto `unpacker`'s root, verifying it first unless it was
/// verified by this pull's download.
fn apply_layer(
    store: &ContentStore,
    unpacker: &Unpacker,
    layer: &LayerBlob,
) -> Result<(), FlattenError> {
    let store_err = |source| FlattenError::Store {
        layer: layer.digest.clone(),
        source,
    };
    if !layer.verified {
        store.verify(&layer.digest, layer.size).map_err(store_err)?;
    }
    let file = store.open_blob(&layer.digest).map_err(store_err)?;
    apply_blob(
        unpacker,
        BufReader::with_capacity(1 << 18, file),
        &layer.digest,
    )
}

/// Applies the layer blob read from `blob` (gzip, zstd or a plain tar, told by its
/// first bytes) onto `unpacker`'s root; errors name `layer`.
pub fn apply_blob<R: BufRead>(
    unpacker: &Unpacker,
    mut blob: R,
    layer: &Digest,
) -> Result<(), FlattenError> {
    let decompress_err = |source| FlattenError::Decompress {
        layer: layer.clone(),
        source,
    };
    let unpack_err = |source| FlattenError::Unpack {
        layer: layer.clone(),
        source,
    };
    let head = blob.fill_buf().map_err(decompress_err)?;
    match sniff(head) {
        Compression::Gzip => {
            let dec = flate2::bufread::MultiGzDecoder::new(blob);
            unpacker.apply(dec).map_err(unpack_err)
        }
        Compression::Zstd => {
            let dec = zstd::Decoder::with_buffer(blob).map_err(decompress_err)?;
            unpacker.apply(dec).map_err(unpack_err)
        }
        Compression::None => unpacker.apply(blob).map_err(unpack_err),
    }
}

/// A scratch root: a private (0700) directory holding the root filesystem being built.
/// Dropping it removes both.
#[derive(Debug)]
pub struct ScratchRoot {
    dir: TempDir,
    root: PathBuf,
}

impl ScratchRoot {
    /// Creates one under `tmp_dir`.
    pub fn create(tmp_dir: &Path) -> Result<Self, FlattenError> {
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| FlattenError::Io { op, path, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("rootfs-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(tmp_dir)
            .map_err(io_err("create scratch root in", tmp_dir))?;
        // Whatever the umask: the guard directory is root's alone.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", dir.path()))?;
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).map_err(io_err("create", &root))?;
        Ok(ScratchRoot { dir, root })
    }

    /// The root filesystem directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The private directory around it.
    pub fn guard_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Applies `layers` in order into a fresh scratch root under `tmp_dir`, within
/// `limits`, and returns it.
pub fn build_rootfs(
    store: &ContentStore,
    layers: &[LayerBlob],
    tmp_dir: &Path,
    limits: &ImageLimits,
) -> Result<ScratchRoot, FlattenError> {
    let scratch = ScratchRoot::create(tmp_dir)?;
    let unpacker = Unpacker::new(scratch.path(), *limits);
    for layer in layers {
        tracing::debug!(layer = %layer.digest, "applying layer");
        apply_layer(store, &unpacker, layer)?;
    }
    Ok(scratch)
}

/// Packs `rootfs` into the erofs image `dest`, atomically.
pub fn build_erofs(rootfs: &Path, dest: &Path) -> Result<(), FlattenError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".building-")
        .suffix(".erofs")
        .tempfile_in(dir)
        .map_err(|source| FlattenError::Io {
            op: "create temporary image in",
            path: dir.to_path_buf(),
            source,
        })?;
    let out = Command::new(MKFS_EROFS)
        .arg("--quiet")
        .arg(tmp.path())
        .arg(rootfs)
        .output()
        .map_err(|e| {
            FlattenError::Mkfs(format!(
                "cannot run {MKFS_EROFS} (erofs-utils installed?): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(FlattenError::Mkfs(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FlattenError::Io { op, path, source }
    };
    tmp.as_file()
        .sync_all()
        .map_err(io_err("sync", tmp.path()))?;
    let file = tmp.persist(dest).map_err(|e| FlattenError::Io {
        op: "rename into place",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    // The block image is shared read-only by every pod.
    fs::set_permissions(dest, fs::Permissions::from_mode(0o444)).map_err(io_err("chmod", dest))?;
    drop(file);
    sync_dir(dir).map_err(io_err("sync", dir))?;
    Ok(())
}
