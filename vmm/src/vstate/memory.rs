//! Guest RAM, split around the 32-bit MMIO gap, in one of two modes:
//!
//! * [`MemoryMode::Private`]: anonymous private mappings (the default).
//! * [`MemoryMode::Shared`]: one memfd mapped `MAP_SHARED`, each RAM region at its
//!   own offset, so that vhost-user backends (virtio-fs) can map the same pages
//!   from the region's fd. Every region then carries a `FileOffset`, which is how
//!   the rest of the VMM tells the modes apart (boot image loading, free page
//!   reporting).

use crate::arch::layout::ram_ranges;
use std::fs::File;
use std::os::fd::FromRawFd;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMode {
    /// Private anonymous memory.
    Private,
    /// A shared memfd that other processes (vhost-user backends) can map.
    Shared,
}

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed (size too large for the host, or out of address space).
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Map {
        /// Requested size.
        size_mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
    /// The memfd could not be created or sized.
    #[error("cannot create {size_mib} MiB of shared guest memory: {source}")]
    Memfd {
        /// Requested size.
        size_mib: u64,
        /// The failing call's error.
        source: std::io::Error,
    },
}

/// A sealed memfd of `size` bytes: it can neither shrink (which would turn guest
/// accesses into SIGBUS in the VMM) nor grow, whoever holds it.
fn memfd(size: u64) -> std::io::Result<File> {
    // SAFETY: the name is a NUL-terminated string; the call only returns a new fd.
    let fd = unsafe {
        libc::memfd_create(
            c"vmlet-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Maps `mem_size` bytes of guest RAM backed as `mode` says; with `huge_pages`,
/// advised for transparent huge pages.
pub fn create(
    mem_size: u64,
    mode: MemoryMode,
    huge_pages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let size_mib = mem_size >> 20;
    let file = match mode {
        MemoryMode::Private => None,
        MemoryMode::Shared => {
            Some(memfd(mem_size).map_err(|source| MemoryError::Memfd { size_mib, source })?)
        }
    };
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (start, size) in ram_ranges(mem_size) {
        let file_offset = match &file {
            Some(f) => Some(FileOffset::new(
                f.try_clone()
                    .map_err(|source| MemoryError::Memfd { size_mib, source })?,
                offset,
            )),
            None => None,
        };
        ranges.push((GuestAddress(start), size as usize, file_offset));
        offset += size;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(&ranges)
        .map_err(|source| MemoryError::Map { size_mib, source })?;
    if !huge_pages {
        return Ok(mem);
    }
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        // Transparent huge pages let KVM map guest RAM with 2 MiB pages (fewer nested
        // page faults, fewer TLB misses), but any page the guest touches then costs the
        // host 2 MiB: off by default, for density. Advice only; failure is fine.
        // SAFETY: the range is exactly one mapping owned by `mem`; madvise does
        // not change its contents.
        let r = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if r != 0 {
            tracing::debug!("MADV_HUGEPAGE: {}", std::io::Error::last_os_error());
        }
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::Bytes;

    #[test]
    fn private_memory_has_no_file() {
        let mem = create(64 << 20, MemoryMode::Private, false).unwrap();
        assert!(mem.iter().all(|r| r.file_offset().is_none()));
    }

    #[test]
    fn shared_memory_is_one_sealed_memfd_seen_by_every_mapping() {
        let mem = create(64 << 20, MemoryMode::Shared, false).unwrap();
        let region = mem.iter().next().unwrap();
        let fo = region.file_offset().unwrap();
        assert_eq!(fo.start(), 0);
        let fd = fo.file().as_raw_fd();
        // SAFETY: F_GET_SEALS on a descriptor `mem` owns.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        assert_eq!(
            seals,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL
        );
        assert!(fo.file().set_len(1 << 20).is_err(), "the memfd shrank");
        // What the guest writes is in the file, as a backend mapping it would see.
        mem.write_slice(b"shared", GuestAddress(0x1000)).unwrap();
        let mut back = [0u8; 6];
        std::os::unix::fs::FileExt::read_exact_at(fo.file(), &mut back, 0x1000).unwrap();
        assert_eq!(&back, b"shared");
    }
}
