//! The content store: blobs (manifests, configs, layers) by digest under
//! `<root>/blobs/sha256/<hex>`.
//!
//! A blob becomes visible only complete and verified: it is written to `<root>/ingest/`,
//! checked against its expected digest and size, synced and renamed into place. Files left
//! in `ingest/` by a crash are removed when the store is opened.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use super::digest::Digest;
use super::locks::KeyedLocks;

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("content store: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Content does not hash to the digest it was announced with.
    #[error("digest mismatch for blob {expected}: content hashes to {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// Content is not as long as announced.
    #[error("size mismatch for blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The bytes received (or on disk).
        actual: u64,
    },
    /// The blob is not in the store.
    #[error("blob {0} is not in the content store")]
    Missing(Digest),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The content store.
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    locks: KeyedLocks<Digest>,
}

impl ContentStore {
    /// Opens (creating if needed) the store under `root` and drops unfinished ingests.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        if ingest.exists() {
            fs::remove_dir_all(&ingest).map_err(io_err("clean", &ingest))?;
        }
        fs::create_dir_all(&ingest).map_err(io_err("create", &ingest))?;
        Ok(Self {
            blobs,
            ingest,
            locks: KeyedLocks::default(),
        })
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is present with the expected size. Its content was verified when
    /// it was committed; readers verify it again as they use it.
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Takes the ingest lock of one digest, so that one download runs per blob.
    pub async fn lock(&self, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        self.locks.lock(digest).await
    }

    /// Starts writing the blob `digest` of `size` bytes.
    pub fn writer(&self, digest: &Digest, size: u64) -> Result<BlobWriter, StoreError> {
        let file = NamedTempFile::new_in(&self.ingest).map_err(io_err("create", &self.ingest))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            digest: digest.clone(),
            size,
            dest: self.path(digest),
        })
    }

    /// Stores `data` as the blob `digest` after checking it.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writer(digest, data.len() as u64)?;
        w.write(data)?;
        w.commit()
    }

    /// Reads a whole (small) blob, verifying digest and size.
    pub fn read(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(digest);
        let data = fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Missing(digest.clone())
            } else {
                io_err("read", &path)(e)
            }
        })?;
        if data.len() as u64 != size {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: data.len() as u64,
            });
        }
        let actual = Digest::of(&data);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Opens a blob for streaming; the reader fails at its end if the content does not
    /// match `digest` and `size`.
    pub fn open_verified(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<VerifyingReader<File>, StoreError> {
        let path = self.path(digest);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Missing(digest.clone())
            } else {
                io_err("open", &path)(e)
            }
        })?;
        Ok(VerifyingReader::new(file, digest.clone(), size))
    }

    /// Re-reads a blob and checks its digest and size (for blobs stored by an earlier
    /// pull, before they are used again).
    pub fn verify(&self, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let path = self.path(digest);
        self.open_verified(digest, size)?
            .finish()
            .map_err(|e| match e.into_inner() {
                Some(inner) => match inner.downcast::<StoreError>() {
                    Ok(store) => *store,
                    Err(other) => io_err("read", &path)(io::Error::other(other)),
                },
                None => io_err("read", &path)(io::Error::other("read failed")),
            })
    }

    /// Opens a blob for reading, unverified: callers verify first (see
    /// [`ContentStore::verify`]) unless the blob was committed moments ago.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Missing(digest.clone())
            } else {
                io_err("open", &path)(e)
            }
        })
    }

    /// All blobs in the store.
    pub fn list(&self) -> Result<Vec<Digest>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))? {
            let entry = entry.map_err(io_err("list", &self.blobs))?;
            if let Some(name) = entry.file_name().to_str() {
                if let Ok(d) = format!("sha256:{name}").parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Deletes a blob (absent is fine).
    pub fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("delete", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Bytes used by the blobs.
    pub fn usage(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for d in self.list()? {
            if let Ok(m) = fs::metadata(self.path(&d)) {
                total += m.len();
            }
        }
        Ok(total)
    }
}

/// A blob being written. Dropping it without [`BlobWriter::commit`] deletes the partial
/// file, so an interrupted download leaves nothing behind.
pub struct BlobWriter {
    file: NamedTempFile,
    hasher: Sha256,
    written: u64,
    digest: Digest,
    size: u64,
    dest: PathBuf,
}

impl BlobWriter {
    /// Appends a chunk; fails as soon as the content outgrows the announced size.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        let path = self.file.path().to_path_buf();
        self.file
            .as_file_mut()
            .write_all(chunk)
            .map_err(io_err("write", &path))
    }

    /// Verifies size and digest, syncs and moves the blob into place.
    pub fn commit(self) -> Result<(), StoreError> {
        if self.written != self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest,
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = Digest::from_hasher(self.hasher);
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let tmp = self.file.path().to_path_buf();
        self.file
            .as_file()
            .sync_all()
            .map_err(io_err("sync", &tmp))?;
        self.file
            .persist(&self.dest)
            .map_err(|e| io_err("rename", &self.dest)(e.error))?;
        if let Some(dir) = self.dest.parent() {
            sync_dir(dir).map_err(io_err("sync", dir))?;
        }
        Ok(())
    }
}

/// Syncs a directory so that a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A reader that hashes what passes through and, at end of stream, fails unless the
/// content matched the expected digest and size: a blob is never used unverified, even
/// if it changed on disk since it was stored.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    digest: Digest,
    size: u64,
    checked: bool,
}

impl<R> VerifyingReader<R> {
    /// Wraps `inner`, expecting `digest` and `size`.
    pub fn new(inner: R, digest: Digest, size: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            read: 0,
            digest,
            size,
            checked: false,
        }
    }

    /// The error (if any) the verification at end of stream produced.
    fn check(&mut self) -> io::Result<()> {
        if self.checked {
            return Ok(());
        }
        self.checked = true;
        if self.read != self.size {
            return Err(io::Error::other(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.read,
            }));
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.digest {
            return Err(io::Error::other(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            }));
        }
        Ok(())
    }

    /// Reads and checks whatever the consumer left unread, so that verification
    /// covers the whole blob (tar streams often end before the blob's padding).
    pub fn finish(mut self) -> io::Result<()>
    where
        R: Read,
    {
        io::copy(&mut self, &mut io::sink())?;
        self.check()
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.check()?;
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::other(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.read,
            }));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_verifies_and_drop_cleans() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        store.put(&d, b"hello").unwrap();
        assert!(store.contains(&d, 5));
        assert_eq!(store.read(&d, 5).unwrap(), b"hello");

        let other = Digest::of(b"other");
        let err = store.put(&other, b"hellx").unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.path(&other).exists());
        let mut w = store.writer(&other, 5).unwrap();
        let err = w.write(b"other!").unwrap_err();
        assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
        drop(w);
        {
            let mut w = store.writer(&other, 5).unwrap();
            w.write(b"ot").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);

        // A blob changed on disk is caught when read.
        fs::write(store.path(&d), b"jello").unwrap();
        assert!(matches!(
            store.read(&d, 5),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(matches!(
            store.verify(&d, 5),
            Err(StoreError::DigestMismatch { .. })
        ));
    }
}
