//! The snapshot's memory file: guest RAM region after region, each at the offset
//! its [`RegionState`] names. Saving writes only the pages that hold something
//! (the rest stay holes, so a mostly idle guest's file is small on disk);
//! restoring maps each region `MAP_PRIVATE` from the file, so that every VM
//! restored from one snapshot shares the page-cache pages it only reads and gets
//! its own copy of a page at its first write.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

const PAGE: usize = 4096;
/// Pages scanned and written per step.
const CHUNK: usize = 256 * PAGE;

/// One guest RAM region in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where it starts in the memory file.
    pub file_offset: u64,
}

/// Why guest memory could not be saved or mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The file could not be created, written, opened or measured.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The memory file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file is shorter or longer than the regions the state names.
    #[error("memory file {path} holds {got} bytes, the snapshot's state says {want}: it is truncated or not this snapshot's")]
    Size {
        /// The memory file.
        path: PathBuf,
        /// Its length.
        got: u64,
        /// The regions' total.
        want: u64,
    },
    /// The regions the state names do not fit the host or overlap.
    #[error("the snapshot's memory regions are invalid: {0}")]
    Regions(String),
    /// A region could not be mapped.
    #[error("mapping the memory file {path}: {source}")]
    Map {
        /// The memory file.
        path: PathBuf,
        /// What vm-memory reported.
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// The regions of `mem`, laid out one after the other in the file.
pub fn layout(mem: &GuestMemoryMmap) -> Vec<RegionState> {
    let mut offset = 0;
    mem.iter()
        .map(|r| {
            let region = RegionState {
                guest_addr: r.start_addr().0,
                len: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            region
        })
        .collect()
}

fn is_zero(bytes: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets.
        unsafe { bytes.align_to::<u64>() }
    };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Writes `mem` into a new file at `path` (mode 0600, refused if it exists), as
/// `layout` places it. Returns the bytes written (the rest are holes).
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, MemoryFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |op| {
        move |source| MemoryFileError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create"))?;
    let regions = layout(mem);
    let total: u64 = regions.iter().map(|r| r.len).sum();
    file.set_len(total).map_err(io("size"))?;
    let mut written = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for (region, state) in mem.iter().zip(&regions) {
        let len = usize::try_from(region.len())
            .map_err(|_| MemoryFileError::Regions(format!("a region of {} bytes", region.len())))?;
        let mut at = 0usize;
        while at < len {
            let n = CHUNK.min(len - at);
            let chunk = &mut buf[..n];
            // Through vm-memory: guest memory may change under a running device.
            let slice = region
                .get_slice(MemoryRegionAddress(at as u64), n)
                .map_err(|e| MemoryFileError::Regions(e.to_string()))?;
            slice.copy_to(chunk);
            // Runs of non-zero pages, each written with one call.
            let mut page = 0;
            while page < n {
                if is_zero(&chunk[page..(page + PAGE).min(n)]) {
                    page += PAGE;
                    continue;
                }
                let start = page;
                while page < n && !is_zero(&chunk[page..(page + PAGE).min(n)]) {
                    page += PAGE;
                }
                let end = page.min(n);
                file.write_all_at(&chunk[start..end], state.file_offset + (at + start) as u64)
                    .map_err(io("write"))?;
                written += (end - start) as u64;
            }
            at += n;
        }
    }
    file.sync_all().map_err(io("sync"))?;
    Ok(written)
}

/// Bytes `path` takes on disk.
pub fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Checks that `regions` are page aligned, ordered, disjoint in guest and file
/// space and `mem_bytes` long in all; returns the file length they need.
pub fn check_layout(regions: &[RegionState], mem_bytes: u64) -> Result<u64, MemoryFileError> {
    let bad = |why: String| Err(MemoryFileError::Regions(why));
    let mut end_guest = 0u64;
    let mut end_file = 0u64;
    for r in regions {
        let page = PAGE as u64;
        if r.len == 0 || r.guest_addr % page != 0 || r.len % page != 0 || r.file_offset % page != 0
        {
            return bad(format!("region {r:?} is empty or not page aligned"));
        }
        if r.guest_addr < end_guest || r.file_offset != end_file {
            return bad(format!("region {r:?} overlaps or leaves a gap"));
        }
        let (Some(g), Some(f)) = (
            r.guest_addr.checked_add(r.len),
            r.file_offset.checked_add(r.len),
        ) else {
            return bad(format!("region {r:?} wraps around"));
        };
        end_guest = g;
        end_file = f;
    }
    if end_file != mem_bytes {
        return bad(format!(
            "the regions hold {end_file} bytes, the VM has {mem_bytes}"
        ));
    }
    Ok(end_file)
}

/// Maps the memory file at `path` as guest RAM laid out as `regions` (checked
/// with [`check_layout`] for `mem_bytes`), each region private copy-on-write.
pub fn restore(
    path: &Path,
    regions: &[RegionState],
    mem_bytes: u64,
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let want = check_layout(regions, mem_bytes)?;
    let io = |op| {
        move |source| MemoryFileError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    // Read-only: the VM's writes go to its private copies, never to the file.
    let file = File::open(path).map_err(io("open"))?;
    let got = file.metadata().map_err(io("measure"))?.len();
    if got != want {
        // A shorter file would turn guest accesses past its end into SIGBUS.
        return Err(MemoryFileError::Size {
            path: path.to_owned(),
            got,
            want,
        });
    }
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let len = usize::try_from(r.len)
            .map_err(|_| MemoryFileError::Regions(format!("a region of {} bytes", r.len)))?;
        let fo = FileOffset::new(file.try_clone().map_err(io("open"))?, r.file_offset);
        let region = MmapRegionBuilder::new(len)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryFileError::Map {
                path: path.to_owned(),
                source,
            })?;
        let region = GuestRegionMmap::new(region, GuestAddress(r.guest_addr)).ok_or_else(|| {
            MemoryFileError::Regions(format!("region {r:?} does not fit the address space"))
        })?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryFileError::Regions(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{create, MemoryMode};
    use vm_memory::Bytes;

    #[test]
    fn saved_memory_comes_back_private_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = create(64 << 20, MemoryMode::Private, false).unwrap();
        mem.write_slice(b"first page", GuestAddress(0)).unwrap();
        mem.write_slice(b"far away", GuestAddress(40 << 20))
            .unwrap();
        let written = save(&mem, &path).unwrap();
        assert_eq!(written, 2 * PAGE as u64, "only the two pages written");
        assert!(
            allocated_bytes(&path).unwrap() < 1 << 20,
            "the rest are holes"
        );
        assert!(
            save(&mem, &path).is_err(),
            "an existing snapshot is never overwritten"
        );

        let regions = layout(&mem);
        let a = restore(&path, &regions, 64 << 20).unwrap();
        let b = restore(&path, &regions, 64 << 20).unwrap();
        let mut got = [0u8; 10];
        a.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert_eq!(&got, b"first page");
        // One restored VM's writes are its own: neither the file nor another VM sees them.
        a.write_slice(b"changed!!!", GuestAddress(0)).unwrap();
        b.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert_eq!(&got, b"first page");
        let mut far = [0u8; 8];
        b.read_slice(&mut far, GuestAddress(40 << 20)).unwrap();
        assert_eq!(&far, b"far away");
        let mut on_disk = [0u8; 10];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut on_disk, 0)
            .unwrap();
        assert_eq!(&on_disk, b"first page");
    }

    #[test]
    fn a_truncated_memory_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = create(32 << 20, MemoryMode::Private, false).unwrap();
        save(&mem, &path).unwrap();
        let regions = layout(&mem);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let e = restore(&path, &regions, 32 << 20).unwrap_err();
        assert!(
            matches!(e, MemoryFileError::Size { got, .. } if got == 16 << 20),
            "{e}"
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn bad_layouts_are_refused() {
        let r = |guest_addr, len, file_offset| RegionState {
            guest_addr,
            len,
            file_offset,
        };
        assert_eq!(check_layout(&[r(0, 8192, 0)], 8192).unwrap(), 8192);
        for bad in [
            vec![r(0, 100, 0)],
            vec![r(0, 4096, 0), r(0, 4096, 4096)],
            vec![r(0, 4096, 0), r(8192, 4096, 0)],
            vec![r(u64::MAX - 4095, 8192, 0)],
            vec![r(0, 4096, 0)],
        ] {
            assert!(check_layout(&bad, 8192).is_err(), "{bad:?}");
        }
    }
}
