//! Guest RAM: anonymous private mappings, split around the 32-bit MMIO gap.

use crate::arch::layout::ram_ranges;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

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
}

/// Maps `mem_size` bytes of guest RAM; with `huge_pages`, advised for transparent
/// huge pages.
pub fn create(mem_size: u64, huge_pages: bool) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size_mib: mem_size >> 20,
        source,
    })?;
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
