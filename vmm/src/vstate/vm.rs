//! The KVM VM: in-kernel IRQ chip and PIT, memory slots, irqfds and ioeventfds.

use crate::arch::layout::KVM_TSS_ADDRESS;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and are we allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    /// The KVM API version is not the stable one.
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("KVM lacks a required capability: {0:?}")]
    Capability(kvm_ioctls::Cap),
    /// A VM ioctl failed.
    #[error("{0}: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
}

const REQUIRED_CAPS: &[kvm_ioctls::Cap] = &[
    kvm_ioctls::Cap::Irqchip,
    kvm_ioctls::Cap::Ioeventfd,
    kvm_ioctls::Cap::Irqfd,
    kvm_ioctls::Cap::UserMemory,
    kvm_ioctls::Cap::SetTssAddr,
    kvm_ioctls::Cap::Pit2,
    kvm_ioctls::Cap::ImmediateExit,
];

/// What KVM keeps of the VM beside its vCPUs: the PIT, the kvm-clock and the
/// interrupt controllers (both PICs and the IOAPIC).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// The kvm-clock.
    pub clock: kvm_clock_data,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
}

const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// An open KVM VM.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm, checks capabilities, and creates a VM with an in-kernel
    /// IRQ chip (PIC + IOAPIC + LAPICs) and PIT.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(version));
        }
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::Capability(*cap));
            }
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_VM", e))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Ioctl("KVM_SET_TSS_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Ioctl("KVM_CREATE_PIT2", e))?;
        Ok(Vm { kvm, fd })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Reads the VM's state (its vCPUs paused).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let pit = self
            .fd
            .get_pit2()
            .map_err(|e| VmError::Ioctl("KVM_GET_PIT2", e))?;
        let clock = self
            .fd
            .get_clock()
            .map_err(|e| VmError::Ioctl("KVM_GET_CLOCK", e))?;
        let mut irqchips = Vec::with_capacity(IRQCHIPS.len());
        for chip_id in IRQCHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(|e| VmError::Ioctl("KVM_GET_IRQCHIP", e))?;
            irqchips.push(chip);
        }
        Ok(VmState {
            pit,
            clock,
            irqchips,
        })
    }

    /// Writes a saved state into this VM (made with [`Vm::new`]) before its
    /// vCPUs first run. The guest's clock goes on from where it was saved.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        self.fd
            .set_pit2(&state.pit)
            .map_err(|e| VmError::Ioctl("KVM_SET_PIT2", e))?;
        // KVM_SET_CLOCK takes no flags but KVM_CLOCK_REALTIME, which asks it to
        // advance the clock by the time since the snapshot: the guest's time stands
        // still instead, and its agent sets the wall clock.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(|e| VmError::Ioctl("KVM_SET_CLOCK", e))?;
        for chip in &state.irqchips {
            self.fd
                .set_irqchip(chip)
                .map_err(|e| VmError::Ioctl("KVM_SET_IRQCHIP", e))?;
        }
        Ok(())
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn set_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| {
                    VmError::Ioctl(
                        "guest memory host address",
                        kvm_ioctls::Error::new(libc::EFAULT),
                    )
                })?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping described by `region` lives in `mem`, which the
            // caller keeps alive for as long as the VM runs (the builder owns both).
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| VmError::Ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        Ok(())
    }
}
