//! Intel MultiProcessor Specification 1.4 table.
//!
//! This table is how the guest kernel finds the IOAPIC and the ISA interrupt
//! routing (its ACPI tables route no interrupts, see [`super::acpi`]), and its CPUs
//! when it is built without ACPI. The format is a fixed little-endian byte layout
//! with no crate that writes it, so it is serialized here by hand.

use super::layout::{APIC_START, EBDA_END, EBDA_START, IOAPIC_PINS, IOAPIC_START, MAX_VCPUS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table has room for.
    #[error("{0} vCPUs requested; the MP table supports 1 to {MAX_VCPUS}")]
    TooManyCpus(u8),
    /// The table does not fit in the EBDA.
    #[error("MP table of {0} bytes does not fit in the EBDA")]
    TooLarge(usize),
    /// Guest memory write failed.
    #[error("writing the MP table to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
// CPU signature and features as Firecracker and QEMU report them (family 6).
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4) | 1;
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// Builds the MP floating pointer followed by the configuration table, as it will
/// sit at `EBDA_START`.
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus; // APIC IDs 0..n are the CPUs.
    let table_addr = EBDA_START as u32 + 16;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.push(0u8); // processor entry
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus entry, bus 0
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]); // IOAPIC, enabled
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS as u8 {
        // I/O interrupt: ISA IRQ n -> IOAPIC pin n, conforming polarity/trigger.
        entries.extend_from_slice(&[3, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0 and NMI on LINT1 of every local APIC.
    entries.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    let length = (44 + entries.len()) as u16;
    table.extend_from_slice(&length.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, filled below
    table.extend_from_slice(b"VMLET   "); // OEM id
    table.extend_from_slice(b"MICROVM     "); // product id
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum
    fp.extend_from_slice(&[0; 5]); // features: 0 = configuration table present
    fp[10] = checksum(&fp);

    let mut out = fp;
    out.extend_from_slice(&table);
    if out.len() as u64 > EBDA_END - EBDA_START {
        return Err(MptableError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs into guest memory.
pub fn setup(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_counts_are_valid() {
        for cpus in [1u8, 2, MAX_VCPUS] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as u32, cpus as u32 + 2 + IOAPIC_PINS + 2);
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        for cpus in [0, MAX_VCPUS + 1] {
            let e = build(cpus).unwrap_err();
            assert!(
                matches!(e, MptableError::TooManyCpus(n) if n == cpus),
                "{cpus}: {e:?}"
            );
        }
    }
}
