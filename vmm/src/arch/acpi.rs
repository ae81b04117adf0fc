//! ACPI tables: the CPUs, and the VM generation ID.
//!
//! The firmware is hardware-reduced (no PM blocks, no SCI, no FACS, no legacy
//! PIC). The MADT lists the CPUs' local APICs, which a kernel with ACPI takes
//! from ACPI rather than from the MP table. Interrupt routing stays with the MP
//! table (its IOAPIC and ISA entries, so that a line's IRQ number is its GSI, as
//! the `virtio_mmio.device=` command line entries say): the MADT lists no IOAPIC
//! and the kernel is booted with `acpi=noirq`. The DSDT describes two devices:
//! the VM generation ID (16 bytes of guest memory the guest kernel mixes into its
//! RNG) and a generic event device whose interrupt tells the kernel the ID
//! changed, so that it reseeds at once (Linux's `vmgenid` and `evged` drivers).
//! The tables sit in the reserved area below 1 MiB with the ID, and the PVH start
//! info points the kernel at the RSDP.
//!
//! The tables and their AML come from the `acpi_tables` crate.

use super::layout::{ACPI_END, ACPI_START, APIC_START, VMGENID_ADDR, VMGENID_IRQ};
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{EnabledStatus, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: [u8; 6] = *b"VMLET ";
const OEM_TABLE_ID: [u8; 8] = *b"VMLETVM ";
const OEM_REVISION: u32 = 1;
/// ACPI 6.x DSDT revision: 64-bit integers in AML.
const DSDT_REVISION: u8 = 6;
/// Bytes in a VM generation ID.
pub const VMGENID_SIZE: usize = 16;
/// Bytes in a system description table's header (signature to creator revision).
const TABLE_HEADER_LEN: u64 = 36;
/// `Notify` value that tells the `vmgenid` driver to re-read the ID (the first
/// device-specific code, which Microsoft's VM generation ID spec names).
const VMGENID_NOTIFY: u8 = 0x80;

/// Errors writing the ACPI tables or the generation ID.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables outgrew the area reserved for them.
    #[error("ACPI tables of {0} bytes do not fit the reserved area")]
    TooLarge(u64),
    /// Guest memory write failed.
    #[error("writing ACPI data to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
    /// The kernel gave no random bytes for a new generation ID.
    #[error("reading random bytes for the VM generation ID: {0}")]
    Random(getrandom::Error),
}

/// The DSDT's AML: `\_SB.VGEN`, the generation ID, and `\_SB.GED0`, whose
/// interrupt evaluates `_EVT` and so notifies `VGEN`.
fn dsdt_aml() -> Vec<u8> {
    let mut bytes = Vec::new();
    // Each device is serialized in the statement that makes it: its parts are
    // borrowed temporaries. Both sit under \_SB, which ACPICA predefines.
    let addr_low = VMGENID_ADDR as u32;
    let addr_high = (VMGENID_ADDR >> 32) as u32;
    aml::Device::new(
        "_SB_.VGEN".into(),
        vec![
            &aml::Name::new("_HID".into(), &"VMLT0001"),
            // The compatible ID Microsoft's spec gives a generation ID device,
            // which Linux's driver matches (ACPICA upper-cases it).
            &aml::Name::new("_CID".into(), &"VM_Gen_Counter"),
            &aml::Name::new("_DDN".into(), &"VM_Gen_Counter"),
            &aml::Name::new(
                "ADDR".into(),
                &aml::Package::new(vec![&addr_low, &addr_high]),
            ),
        ],
    )
    .to_aml_bytes(&mut bytes);
    aml::Device::new(
        "_SB_.GED0".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                    true,
                    true,
                    false,
                    false,
                    VMGENID_IRQ,
                )]),
            ),
            &aml::Method::new(
                "_EVT".into(),
                1,
                true,
                vec![&aml::If::new(
                    &aml::Equal::new(&aml::Arg(0), &VMGENID_IRQ),
                    vec![&aml::Notify::new(
                        &aml::Path::new("\\_SB_.VGEN"),
                        &VMGENID_NOTIFY,
                    )],
                )],
            ),
        ],
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

/// Aligns `addr` up to 8 bytes, where every table starts.
fn align8(addr: u64) -> u64 {
    (addr + 7) & !7
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The tables as they sit from `ACPI_START`, for `vcpus` CPUs: RSDP, XSDT, FADT,
/// MADT, DSDT.
pub fn build(vcpus: u8) -> Result<Vec<u8>, AcpiError> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..vcpus {
        // APIC IDs 0..n, as in the MP table and the vCPUs' CPUID.
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    let madt = aml_bytes(&madt);

    let xsdt_addr = align8(ACPI_START + Rsdp::len() as u64);
    let fadt_addr = align8(xsdt_addr + TABLE_HEADER_LEN + 2 * 8);
    let madt_addr = align8(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = align8(madt_addr + madt.len() as u64);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        TABLE_HEADER_LEN as u32,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&dsdt_aml());
    dsdt.update_checksum();

    let fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .finalize();
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);

    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge(end - ACPI_START));
    }
    let mut out = vec![0u8; (end - ACPI_START) as usize];
    let mut place = |addr: u64, bytes: &[u8]| {
        let at = (addr - ACPI_START) as usize;
        out[at..at + bytes.len()].copy_from_slice(bytes);
    };
    place(ACPI_START, &aml_bytes(&rsdp));
    place(xsdt_addr, &aml_bytes(&xsdt));
    place(fadt_addr, &aml_bytes(&fadt));
    place(madt_addr, &madt);
    place(dsdt_addr, dsdt.as_slice());
    Ok(out)
}

/// Writes the tables for `vcpus` CPUs and a fresh generation ID into guest
/// memory; returns the RSDP's address, for the PVH start info.
pub fn setup(mem: &GuestMemoryMmap, vcpus: u8) -> Result<u64, AcpiError> {
    mem.write_slice(&build(vcpus)?, GuestAddress(ACPI_START))
        .map_err(AcpiError::Write)?;
    renew_generation_id(mem)?;
    Ok(ACPI_START)
}

/// Writes a new random generation ID: the guest sees it when its generation
/// event is raised (after a restore), or when its driver starts (at boot).
pub fn renew_generation_id(mem: &GuestMemoryMmap) -> Result<[u8; VMGENID_SIZE], AcpiError> {
    let mut id = [0u8; VMGENID_SIZE];
    getrandom::fill(&mut id).map_err(AcpiError::Random)?;
    mem.write_slice(&id, GuestAddress(VMGENID_ADDR))
        .map_err(AcpiError::Write)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
    }

    /// Follows RSDP -> XSDT -> FADT -> DSDT as the guest does, checking every
    /// signature, length and checksum on the way.
    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        let t = build(3).unwrap();
        let at = |addr: u64| (addr - ACPI_START) as usize;
        assert_eq!(&t[0..8], b"RSD PTR ");
        assert_eq!(sum(&t[0..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(&t[0..36]), 0, "RSDP extended checksum");
        let table = |addr: u64, sig: &[u8; 4]| {
            let start = at(addr);
            assert_eq!(&t[start..start + 4], sig);
            let len = u32_at(&t, start + 4) as usize;
            assert_eq!(sum(&t[start..start + len]), 0, "{:?} checksum", sig);
            start
        };
        let xsdt = table(u64_at(&t, 24), b"XSDT");
        assert_eq!(u32_at(&t, xsdt + 4), 52, "two entries");
        let fadt = table(u64_at(&t, xsdt + 36), b"FACP");
        let madt = table(u64_at(&t, xsdt + 44), b"APIC");
        assert_eq!(u32_at(&t, madt + 36), APIC_START as u32);
        // One enabled local APIC per CPU, IDs 0..3, and nothing else (no IOAPIC:
        // interrupts are routed by the MP table).
        assert_eq!(u32_at(&t, madt + 4), 44 + 3 * 8);
        for cpu in 0..3u8 {
            let e = madt + 44 + 8 * usize::from(cpu);
            assert_eq!(&t[e..e + 4], &[0, 8, cpu, cpu]);
            assert_eq!(u32_at(&t, e + 4), 1);
        }
        let flags = u32_at(&t, fadt + 112);
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        let dsdt = table(u64_at(&t, fadt + 140), b"DSDT");
        let dsdt_len = u32_at(&t, dsdt + 4) as usize;
        let aml = &t[dsdt + 36..dsdt + dsdt_len];
        let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"VM_Gen_Counter"));
        assert!(has(b"ACPI0013"));
        assert!(has(b"_EVT"));
        assert!(dsdt + dsdt_len <= (ACPI_END - ACPI_START) as usize);
    }

    #[test]
    fn the_dsdt_gives_the_generation_id_address() {
        let aml = dsdt_aml();
        // ADDR's package holds the low and high halves as DWORD constants.
        let low = (VMGENID_ADDR as u32).to_le_bytes();
        let mut dword = vec![0x0c];
        dword.extend_from_slice(&low);
        assert!(aml.windows(5).any(|w| w == dword.as_slice()));
    }

    #[test]
    fn generation_ids_are_new_each_time() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(setup(&mem, 1).unwrap(), ACPI_START);
        let mut first = [0u8; VMGENID_SIZE];
        mem.read_slice(&mut first, GuestAddress(VMGENID_ADDR))
            .unwrap();
        let second = renew_generation_id(&mem).unwrap();
        assert_ne!(first, second);
        assert_ne!(first, [0u8; VMGENID_SIZE]);
        let mut read = [0u8; VMGENID_SIZE];
        mem.read_slice(&mut read, GuestAddress(VMGENID_ADDR))
            .unwrap();
        assert_eq!(read, second);
    }
}
