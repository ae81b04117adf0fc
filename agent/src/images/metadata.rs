//! Image records: what the CRI ImageService lists and what container creation reads.
//! Kept in one JSON file replaced atomically (temp file + rename), so a restart finds
//! exactly the images whose pulls completed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::pull::BlobRef;
use super::reference::ImageRef;
use super::store::sync_dir;

/// Errors of the metadata file.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Reading or writing the file failed.
    #[error("image metadata {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not valid.
    #[error("image metadata {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The parts of the OCI image config that container creation needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User` (`name`, `uid`, `uid:gid`, ...).
    pub user: String,
    /// `ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// `Volumes` keys.
    pub volumes: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    pub stop_signal: String,
}

impl ImageConfig {
    /// Extracts the fields from an image config blob (OCI or Docker; same JSON shape).
    pub fn from_blob(data: &[u8]) -> Result<Self, serde_json::Error> {
        let parsed: oci_spec::image::ImageConfiguration = serde_json::from_slice(data)?;
        let Some(c) = parsed.config() else {
            return Ok(Self::default());
        };
        Ok(Self {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
            volumes: c.volumes().clone().unwrap_or_default(),
            labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
        })
    }
}

/// One image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image ID: the config blob's digest.
    pub id: Digest,
    /// `registry/repo:tag` names pointing at it.
    pub repo_tags: Vec<String>,
    /// `registry/repo@digest` names pointing at it.
    pub repo_digests: Vec<String>,
    /// Bytes of its blobs as the registry serves them (config + layers).
    pub size: u64,
    /// Manifest blobs (index and image manifests) of every repo digest.
    pub manifests: Vec<BlobRef>,
    /// The config blob.
    pub config_blob: BlobRef,
    /// Layers, bottom first.
    pub layers: Vec<BlobRef>,
    /// The recorded image config.
    pub config: ImageConfig,
}

impl ImageRecord {
    /// Every blob this record keeps alive.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.manifests
            .iter()
            .chain(std::iter::once(&self.config_blob))
            .chain(self.layers.iter())
            .map(|b| &b.digest)
    }
}

/// All image records, persisted.
pub struct Metadata {
    path: PathBuf,
    images: HashMap<Digest, ImageRecord>,
}

#[derive(Serialize, Deserialize, Default)]
struct FileFormat {
    images: Vec<ImageRecord>,
}

impl Metadata {
    /// Loads the records from `path` (none if the file does not exist).
    pub fn load(path: &Path) -> Result<Self, MetadataError> {
        let images = match fs::read(path) {
            Ok(data) => {
                let f: FileFormat =
                    serde_json::from_slice(&data).map_err(|source| MetadataError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })?;
                f.images.into_iter().map(|r| (r.id.clone(), r)).collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => {
                return Err(MetadataError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            images,
        })
    }

    /// Writes the records atomically.
    pub fn save(&self) -> Result<(), MetadataError> {
        let io_err = |source| MetadataError::Io {
            path: self.path.clone(),
            source,
        };
        let mut images: Vec<ImageRecord> = self.images.values().cloned().collect();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        let data = serde_json::to_vec_pretty(&FileFormat { images }).map_err(|source| {
            MetadataError::Corrupt {
                path: self.path.clone(),
                source,
            }
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
        tmp.write_all(&data).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(&self.path).map_err(|e| io_err(e.error))?;
        sync_dir(dir).map_err(io_err)
    }

    /// All records.
    pub fn list(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    /// The record with this ID.
    pub fn get(&self, id: &Digest) -> Option<&ImageRecord> {
        self.images.get(id)
    }

    /// Adds or merges a record; a repo tag moves from whichever image had it (as
    /// `docker pull` of a moved tag does). Does not save.
    pub fn upsert(&mut self, record: ImageRecord) {
        for other in self.images.values_mut() {
            if other.id != record.id {
                other.repo_tags.retain(|t| !record.repo_tags.contains(t));
            }
        }
        match self.images.get_mut(&record.id) {
            Some(existing) => {
                for t in record.repo_tags {
                    if !existing.repo_tags.contains(&t) {
                        existing.repo_tags.push(t);
                    }
                }
                for d in record.repo_digests {
                    if !existing.repo_digests.contains(&d) {
                        existing.repo_digests.push(d);
                    }
                }
                for m in record.manifests {
                    if !existing.manifests.contains(&m) {
                        existing.manifests.push(m);
                    }
                }
            }
            None => {
                self.images.insert(record.id.clone(), record);
            }
        }
    }

    /// Removes a record. Does not save.
    pub fn remove(&mut self, id: &Digest) -> Option<ImageRecord> {
        self.images.remove(id)
    }

    /// Finds an image as containerd's CRI does: full ID (`sha256:<hex>` or bare hex), a
    /// unique ID prefix, a repo tag or a repo digest (the reference normalized first, so
    /// `busybox` finds `docker.io/library/busybox:latest`).
    pub fn resolve(&self, query: &str) -> Option<&ImageRecord> {
        if let Ok(d) = query.parse::<Digest>() {
            if let Some(r) = self.images.get(&d) {
                return Some(r);
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        let is_hex =
            !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if let Ok(r) = ImageRef::parse(query) {
            let by_name = self.images.values().find(|img| match r.digest() {
                Some(d) => img.repo_digests.contains(&r.repo_digest(d)),
                None => r.repo_tag().is_some_and(|t| img.repo_tags.contains(&t)),
            });
            if by_name.is_some() {
                return by_name;
            }
        }
        if is_hex {
            let mut hits = self
                .images
                .values()
                .filter(|img| img.id.hex().starts_with(hex));
            if let (Some(one), None) = (hits.next(), hits.next()) {
                return Some(one);
            }
        }
        None
    }
}
