//! The file behind a drive.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Errors opening or using a backing file.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file cannot be opened.
    #[error("cannot open drive file {0}: {1}")]
    Open(PathBuf, std::io::Error),
    /// The file's size cannot be read.
    #[error("cannot stat drive file {0}: {1}")]
    Stat(PathBuf, std::io::Error),
}

/// An open backing file.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl Disk {
    /// Opens `path` for reading, and for writing unless `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| DiskError::Open(path.to_owned(), e))?;
        Self::from_file(file, path, read_only)
    }

    /// A file opened elsewhere (sent by the client), named `path`. A writable drive
    /// needs a file opened for writing: the first write would fail otherwise.
    pub fn from_file(file: File, path: &Path, read_only: bool) -> Result<Self, DiskError> {
        if !read_only {
            // SAFETY: F_GETFL on a descriptor we own reads its flags only.
            let flags =
                unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_GETFL) };
            if flags < 0 || flags & libc::O_ACCMODE != libc::O_RDWR {
                return Err(DiskError::Open(
                    path.to_owned(),
                    std::io::Error::other(
                        "the file sent for a writable drive is not open for writing",
                    ),
                ));
            }
        }
        let size = file
            .metadata()
            .map_err(|e| DiskError::Stat(path.to_owned(), e))?
            .len();
        Ok(Disk {
            file,
            path: path.to_owned(),
            size,
            read_only,
        })
    }

    /// Capacity in whole sectors (a partial last sector is not exposed).
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The backing file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Frees `len` bytes at `offset` in the file, which then read as zeros.
    pub fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        let mode = crate::devices::virtio::balloon::PUNCH_HOLE;
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        if unsafe { libc::fallocate(fd, mode, offset, len) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Flushes written data to stable storage.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}
