//! Guest physical memory map of a vmlet micro-VM.
//!
//! ```text
//! 0x0000_0500  GDT (boot segments)           0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info, module list and memory map
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA), found by the kernel's SMP scan
//! 0x000e_0000  ACPI tables (RSDP first)       0x000f_f000  VM generation ID
//! 0x0010_0000  high memory: the kernel ELF loads here or above
//! ...          initramfs at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio devices, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

/// Boot GDT address.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT address (right after the 4-entry GDT).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs), after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map table, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Maximum number of PVH memory map entries we write.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 8;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Command line capacity, including the terminating NUL (Linux's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory.
pub const EBDA_END: u64 = 0xa0000;
/// ACPI tables, from the RSDP (in the reserved area below 1 MiB).
pub const ACPI_START: u64 = 0xe_0000;
/// End of the ACPI tables' area.
pub const ACPI_END: u64 = VMGENID_ADDR;
/// The 16-byte VM generation ID (a page of its own, which the guest maps).
pub const VMGENID_ADDR: u64 = 0xf_f000;
/// Start of high memory.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM TSS (3 pages) in the gap, needed by KVM on Intel.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// GSI of the serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// GSI of the generic event device that announces a new VM generation ID (COM2's
/// ISA line, which no device of ours uses).
pub const VMGENID_IRQ: u32 = 3;
/// First GSI handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Number of IOAPIC pins (KVM's in-kernel IOAPIC).
pub const IOAPIC_PINS: u32 = 24;
/// Most vCPUs the MP table in the EBDA has room for.
pub const MAX_VCPUS: u8 = 32;

// The PVH structures (56-byte start info, 32-byte module entries, 24-byte memory
// map entries) must not overlap each other or the command line.
const _: () = assert!(PVH_INFO_START + 56 <= PVH_MODLIST_START);
const _: () = assert!(PVH_MODLIST_START + 32 <= PVH_MEMMAP_START);
const _: () = assert!(PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64 <= CMDLINE_START);
// The ACPI area and the generation ID lie in the reserved range below 1 MiB.
const _: () = assert!(EBDA_END <= ACPI_START && VMGENID_ADDR + 0x1000 <= HIMEM_START);
const _: () = assert!(VMGENID_IRQ != SERIAL_IRQ && VMGENID_IRQ < VIRTIO_IRQ_BASE);

/// RAM ranges `(start, size)` for `mem_size` bytes of guest memory, split around the
/// 32-bit MMIO gap.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
