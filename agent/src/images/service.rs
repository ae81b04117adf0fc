//! The image manager: pull → store → flatten → record, plus lookup, removal and
//! garbage collection, with the locking that keeps concurrent calls consistent.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use super::digest::Digest;
use super::flatten::{self, FlattenError, LayerBlob};
use super::limits::ImageLimits;
use super::locks::KeyedLocks;
use super::metadata::{ImageConfig, ImageRecord, Metadata, MetadataError};
use super::pull::{Credentials, PullError, Puller, RegistriesConfig};
use super::reference::{ImageRef, ReferenceError};
use super::store::{ContentStore, StoreError};
use crate::metrics::Metrics;

/// Errors of the image manager.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// No image matches.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// The image is used by containers and cannot be removed.
    #[error("image {id} is in use by {users} container(s)")]
    InUse {
        /// The image.
        id: Digest,
        /// How many leases hold it.
        users: usize,
    },
    /// The pull failed.
    #[error("pulling {reference}: {source}")]
    Pull {
        /// The reference.
        reference: String,
        /// The cause.
        source: PullError,
    },
    /// Flattening failed (bad layers, path escapes, mkfs).
    #[error("flattening {reference}: {source}")]
    Flatten {
        /// The reference.
        reference: String,
        /// The cause.
        source: FlattenError,
    },
    /// The image config blob is not valid JSON of the right shape.
    #[error("image config {id}: {source}")]
    BadConfig {
        /// The config digest.
        id: Digest,
        /// The cause.
        source: serde_json::Error,
    },
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The metadata file failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Another file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How the image manager is set up.
#[derive(Debug, Clone)]
pub struct ImageManagerConfig {
    /// Where everything lives (e.g. `/var/lib/vmlet/images`).
    pub state_dir: PathBuf,
    /// Per-registry settings.
    pub registries: RegistriesConfig,
    /// Where layers are unpacked before `mkfs.erofs` packs them (in a `vmlet-flatten`
    /// subdirectory, emptied on open). Default: `<state_dir>/tmp`. The scratch root is
    /// thrown away after each flatten, so a tmpfs here saves the disk file-creation cost,
    /// which dominates flattening on ext4, at the price of RAM the size of the largest
    /// image being flattened.
    pub scratch_dir: Option<PathBuf>,
    /// Caps on manifest, config and unpacked sizes of an image.
    pub limits: ImageLimits,
}

impl ImageManagerConfig {
    /// Defaults for everything but the state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            registries: RegistriesConfig::default(),
            scratch_dir: None,
            limits: ImageLimits::default(),
        }
    }
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The image as recorded.
    pub image: ImageRecord,
    /// Blobs this pull downloaded; the others were present or fetched by a concurrent pull.
    pub blobs_downloaded: usize,
    /// Their bytes.
    pub bytes_downloaded: u64,
    /// Whether this pull built the block image (false: it existed already).
    pub flattened: bool,
    /// Where the time went.
    pub timings: PullTimings,
}

/// Durations of a pull's phases.
#[derive(Debug, Clone, Copy, Default)]
pub struct PullTimings {
    /// Resolving and downloading (or finding) the blobs.
    pub fetch: Duration,
    /// Applying the layers onto a scratch root.
    pub unpack: Duration,
    /// Building the erofs image.
    pub mkfs: Duration,
}

/// What the VM side needs to run a container of an image.
#[derive(Debug, Clone)]
pub struct BlockImage {
    /// The image ID.
    pub id: Digest,
    /// The read-only erofs file with the image's root filesystem.
    pub path: PathBuf,
    /// The recorded image config.
    pub config: ImageConfig,
}

/// Disk use of the image store, for CRI ImageFsInfo.
#[derive(Debug, Clone, Copy)]
pub struct FsUsage {
    /// Bytes used (allocated blocks).
    pub used_bytes: u64,
    /// Inodes used.
    pub inodes_used: u64,
}

/// Marks an image in use while alive; removal of the image fails until it is dropped.
#[derive(Debug)]
pub struct ImageLease {
    id: Digest,
    users: Arc<Mutex<HashMap<Digest, usize>>>,
}

impl ImageLease {
    /// The leased image.
    pub fn id(&self) -> &Digest {
        &self.id
    }
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        let mut users = lock(&self.users);
        if let Some(n) = users.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.id);
            }
        }
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded maps stay consistent because every
/// critical section is a single insert/remove.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Images on this node.
pub struct ImageManager {
    state_dir: PathBuf,
    erofs_dir: PathBuf,
    tmp_dir: PathBuf,
    store: Arc<ContentStore>,
    puller: Puller,
    metadata: Mutex<Metadata>,
    /// Pulls hold it shared; removal and garbage collection hold it exclusively, so a
    /// blob fetched by a pull that is not yet recorded is never collected.
    gc: RwLock<()>,
    /// One flatten per image ID at a time.
    flattening: KeyedLocks<Digest>,
    limits: ImageLimits,
    users: Arc<Mutex<HashMap<Digest, usize>>>,
    /// Where pulls are counted.
    metrics: Arc<Metrics>,
}

impl ImageManager {
    /// Opens the image state, dropping leftovers of interrupted pulls.
    pub async fn open(config: ImageManagerConfig) -> Result<Self, ImageError> {
        let state_dir = config.state_dir;
        let erofs_dir = state_dir.join("erofs");
        let tmp_dir = match config.scratch_dir {
            Some(dir) => dir.join("vmlet-flatten"),
            None => state_dir.join("tmp"),
        };
        for d in [&state_dir, &erofs_dir] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(io_err("clean", &tmp_dir))?;
        }
        fs::create_dir_all(&tmp_dir).map_err(io_err("create", &tmp_dir))?;
        let store = Arc::new(ContentStore::open(&state_dir.join("content"))?);
        let metadata = Metadata::load(&state_dir.join("images.json"))?;
        let mgr = Self {
            state_dir,
            erofs_dir,
            tmp_dir,
            store,
            puller: Puller::new(config.registries, config.limits),
            limits: config.limits,
            metadata: Mutex::new(metadata),
            gc: RwLock::new(()),
            flattening: KeyedLocks::default(),
            users: Arc::new(Mutex::new(HashMap::new())),
            metrics: Arc::default(),
        };
        {
            let _gc = mgr.gc.write().await;
            mgr.collect_garbage()?;
        }
        Ok(mgr)
    }

    /// The manager, counting its pulls in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The content store (read access for diagnostics and tests).
    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    fn erofs_path(&self, id: &Digest) -> PathBuf {
        self.erofs_dir.join(format!("{}.erofs", id.hex()))
    }

    /// Pulls `reference`, flattens it (once per image ID) and records it. On failure
    /// nothing of this pull stays visible: blobs no image references are collected.
    pub async fn pull(
        &self,
        reference: &str,
        creds: &Credentials,
    ) -> Result<PullOutcome, ImageError> {
        let image = ImageRef::parse(reference)?;
        let result = {
            let _gc = self.gc.read().await;
            self.pull_locked(&image, creds).await
        };
        // A failed pull counts no bytes: what it fetched is collected.
        let bytes = result.as_ref().map_or(0, |o| o.bytes_downloaded);
        self.metrics.image_pull(result.is_ok(), bytes);
        if result.is_err() {
            // Another pull or removal holding the lock will leave the orphans to the next
            // collection; never wait here.
            if let Ok(_gc) = self.gc.try_write() {
                if let Err(e) = self.collect_garbage() {
                    tracing::warn!(error = %e, "collecting blobs of a failed pull");
                }
            }
        }
        result
    }

    async fn pull_locked(
        &self,
        image: &ImageRef,
        creds: &Credentials,
    ) -> Result<PullOutcome, ImageError> {
        let started = Instant::now();
        let mut timings = PullTimings::default();
        let fetched = self
            .puller
            .fetch(&self.store, image, creds)
            .await
            .map_err(|source| ImageError::Pull {
                reference: image.to_string(),
                source,
            })?;
        timings.fetch = started.elapsed();
        let id = fetched.config.digest.clone();
        let config_data = self.store.read(&id, fetched.config.size)?;
        let config =
            ImageConfig::from_blob(&config_data).map_err(|source| ImageError::BadConfig {
                id: id.clone(),
                source,
            })?;

        let flattened = {
            let _g = self.flattening.lock(&id).await;
            let dest = self.erofs_path(&id);
            if dest.exists() {
                false
            } else {
                let store = Arc::clone(&self.store);
                let layers: Vec<LayerBlob> = fetched
                    .layers
                    .iter()
                    .map(|b| LayerBlob {
                        digest: b.digest.clone(),
                        size: b.size,
                        verified: fetched.downloaded.contains(&b.digest),
                    })
                    .collect();
                let tmp = self.tmp_dir.clone();
                let limits = self.limits;
                let (unpack, mkfs) = tokio::task::spawn_blocking(move || {
                    let t = Instant::now();
                    let root = flatten::build_rootfs(&store, &layers, &tmp, &limits)?;
                    let unpacked = t.elapsed();
                    flatten::build_erofs(root.path(), &dest)?;
                    Ok::<_, FlattenError>((unpacked, t.elapsed() - unpacked))
                })
                .await
                .map_err(|e| ImageError::Internal(format!("flatten task: {e}")))?
                .map_err(|source| ImageError::Flatten {
                    reference: image.to_string(),
                    source,
                })?;
                timings.unpack = unpack;
                timings.mkfs = mkfs;
                true
            }
        };

        let size = fetched.config.size + fetched.layers.iter().map(|l| l.size).sum::<u64>();
        let bytes_downloaded = fetched
            .manifests
            .iter()
            .chain([&fetched.config])
            .chain(&fetched.layers)
            .filter(|b| fetched.downloaded.contains(&b.digest))
            .map(|b| b.size)
            .sum();
        let record = ImageRecord {
            id: id.clone(),
            repo_tags: image.repo_tag().into_iter().collect(),
            repo_digests: vec![image.repo_digest(&fetched.top_digest)],
            size,
            manifests: fetched.manifests.clone(),
            config_blob: fetched.config.clone(),
            layers: fetched.layers.clone(),
            config,
        };
        let image_rec = {
            let mut meta = lock(&self.metadata);
            meta.upsert(record);
            meta.save()?;
            meta.get(&id)
                .cloned()
                .ok_or_else(|| ImageError::Internal("record vanished".into()))?
        };
        tracing::info!(
            %image,
            id = %id,
            downloaded = fetched.downloaded.len(),
            flattened,
            fetch_ms = timings.fetch.as_millis(),
            unpack_ms = timings.unpack.as_millis(),
            mkfs_ms = timings.mkfs.as_millis(),
            "pulled"
        );
        Ok(PullOutcome {
            image: image_rec,
            blobs_downloaded: fetched.downloaded.len(),
            bytes_downloaded,
            flattened,
            timings,
        })
    }

    /// All images.
    pub fn list(&self) -> Vec<ImageRecord> {
        let mut v: Vec<ImageRecord> = lock(&self.metadata).list().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The image `query` names (ID, ID prefix, repo tag or repo digest), if any.
    pub fn status(&self, query: &str) -> Option<ImageRecord> {
        lock(&self.metadata).resolve(query).cloned()
    }

    /// The block image and config of the image `query` names, for creating a container.
    pub fn block_image(&self, query: &str) -> Result<BlockImage, ImageError> {
        let rec = self
            .status(query)
            .ok_or_else(|| ImageError::NotFound(query.to_string()))?;
        let path = self.erofs_path(&rec.id);
        if !path.is_file() {
            return Err(ImageError::NotFound(format!(
                "{query} (block image missing)"
            )));
        }
        Ok(BlockImage {
            id: rec.id,
            path,
            config: rec.config,
        })
    }

    /// Records an image named `name` whose block image is an empty file, without a
    /// registry: for the runtime's unit tests, which never mount it.
    #[cfg(test)]
    pub(crate) fn add_test_image(&self, name: &str, config: ImageConfig) -> Digest {
        let id = Digest::of(name.as_bytes());
        let blob = super::pull::BlobRef {
            digest: id.clone(),
            size: 0,
        };
        let _ = fs::write(self.erofs_path(&id), b"");
        lock(&self.metadata).upsert(ImageRecord {
            id: id.clone(),
            repo_tags: vec![name.to_owned()],
            repo_digests: Vec::new(),
            size: 0,
            manifests: Vec::new(),
            config_blob: blob,
            layers: Vec::new(),
            config,
        });
        id
    }

    /// Marks the image `query` names as used by a container until the lease drops.
    pub fn lease(&self, query: &str) -> Result<ImageLease, ImageError> {
        let meta = lock(&self.metadata);
        let rec = meta
            .resolve(query)
            .ok_or_else(|| ImageError::NotFound(query.to_string()))?;
        *lock(&self.users).entry(rec.id.clone()).or_default() += 1;
        Ok(ImageLease {
            id: rec.id.clone(),
            users: Arc::clone(&self.users),
        })
    }

    /// Removes the image `query` names with all its names, then frees blobs and the
    /// block image nothing else uses. Fails if a container uses it.
    pub async fn remove(&self, query: &str) -> Result<(), ImageError> {
        let _gc = self.gc.write().await;
        {
            let mut meta = lock(&self.metadata);
            let id = meta
                .resolve(query)
                .map(|r| r.id.clone())
                .ok_or_else(|| ImageError::NotFound(query.to_string()))?;
            if let Some(&users) = lock(&self.users).get(&id) {
                return Err(ImageError::InUse { id, users });
            }
            meta.remove(&id);
            meta.save()?;
        }
        self.collect_garbage()
    }

    /// Deletes blobs and block images no record references. Callers hold `gc` exclusively.
    fn collect_garbage(&self) -> Result<(), ImageError> {
        let (live_blobs, live_ids): (HashSet<Digest>, HashSet<Digest>) = {
            let meta = lock(&self.metadata);
            (
                meta.list().flat_map(|r| r.blobs().cloned()).collect(),
                meta.list().map(|r| r.id.clone()).collect(),
            )
        };
        for d in self.store.list()? {
            if !live_blobs.contains(&d) {
                tracing::debug!(blob = %d, "collecting blob");
                self.store.delete(&d)?;
            }
        }
        for entry in fs::read_dir(&self.erofs_dir).map_err(io_err("list", &self.erofs_dir))? {
            let entry = entry.map_err(io_err("list", &self.erofs_dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let live = name
                .strip_suffix(".erofs")
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
                .is_some_and(|id| live_ids.contains(&id));
            if !live {
                let path = entry.path();
                tracing::debug!(path = %path.display(), "collecting block image");
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Disk use of everything under the state directory.
    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let mut usage = FsUsage {
            used_bytes: 0,
            inodes_used: 0,
        };
        let mut stack = vec![self.state_dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let entry = entry.map_err(io_err("list", &dir))?;
                let Ok(m) = entry.metadata() else { continue };
                usage.used_bytes += m.blocks() * 512;
                usage.inodes_used += 1;
                if m.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(usage)
    }
}
