//! PVH direct boot (the x86/HVM direct boot ABI): the kernel ELF's
//! `XEN_ELFNOTE_PHYS32_ENTRY` is entered in 32-bit protected mode with `%ebx`
//! pointing at an `hvm_start_info` that carries the command line, the memory map
//! and the initramfs as a module. No real-mode setup code, no zero page.

use super::layout::*;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// `hvm_start_info.magic`: "xEn3" with bit 7 of the 'E' set.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Errors writing the PVH boot structures.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// linux-loader refused or failed to write the structures.
    #[error("writing PVH boot parameters: {0}")]
    Configure(#[from] linux_loader::configurator::Error),
}

/// Where the initramfs was loaded.
#[derive(Clone, Copy, Debug)]
pub struct Initrd {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The PVH memory map for `mem_size` bytes of RAM.
pub fn memmap(mem_size: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr, size, type_| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, size) in ram_ranges(mem_size) {
        let start = start.max(HIMEM_START);
        let end = if start < MMIO_GAP_START {
            mem_size.min(MMIO_GAP_START)
        } else {
            start + size
        };
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes `hvm_start_info` (pointing at the ACPI RSDP at `rsdp`), the memory map
/// and the module list into guest memory.
pub fn configure(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<Initrd>,
    rsdp: u64,
) -> Result<(), PvhError> {
    let map = memmap(mem_size);
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        rsdp_paddr: rsdp,
        ..Default::default()
    };
    if initrd.is_some() {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(PVH_MEMMAP_START));
    if let Some(rd) = initrd {
        let module = hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        };
        params.set_modules::<hvm_modlist_entry>(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memmap_covers_low_and_high_ram() {
        let map = memmap(256 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 256 << 20);
        let big = memmap(5 << 30);
        assert_eq!(big.len(), 4);
        assert_eq!(big[2].addr + big[2].size, MMIO_GAP_START);
        assert_eq!(big[3].addr, MMIO_GAP_END);
        assert!(big.len() <= PVH_MEMMAP_MAX_ENTRIES);
    }
}
