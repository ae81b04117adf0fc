//! A vCPU's architectural state, as a snapshot keeps it: read from a vCPU that
//! has left `KVM_RUN` and written into a new one before it first runs.
//!
//! The MSRs saved are those KVM lists (`KVM_GET_MSR_INDEX_LIST`: what the host
//! saves for migration plus KVM's own, kvm-clock included) that this vCPU can
//! read; the count `KVM_SET_MSRS` reports is checked on restore, so an MSR the
//! host refuses fails the restore by name instead of being dropped silently.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// `IA32_TSC_DEADLINE`: a zero deadline would leave the restored guest without
/// timer interrupts (it armed none because it was about to), see [`VcpuState::save`].
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// `IA32_TSC`.
const MSR_IA32_TSC: u32 = 0x10;

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM ioctl failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// KVM took fewer MSRs than the snapshot holds.
    #[error("KVM_SET_MSRS: the host refused MSR {index:#x} ({set} of {total} set)")]
    MsrRefused {
        /// The first MSR not set.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many the snapshot holds.
        total: usize,
    },
    /// The snapshot holds more CPUID entries or MSRs than KVM takes.
    #[error("the snapshot holds {got} {what}, at most {max} can be restored")]
    TooMany {
        /// CPUID entries or MSRs.
        what: &'static str,
        /// How many it holds.
        got: usize,
        /// KVM's limit.
        max: usize,
    },
}

fn kvm(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |e| VcpuStateError::Kvm(op, e)
}

/// Everything KVM keeps of one x86 vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest saw (it must see the same after restore).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// The MSRs that could be read, in the order they are written back.
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (the legacy 4 KiB XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Running, halted, waiting for SIPI, ...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts and NMIs.
    pub events: kvm_vcpu_events,
    /// TSC frequency the guest calibrated against, if KVM reports one.
    pub tsc_khz: Option<u32>,
}

/// The MSRs of `kvm`'s index list.
pub fn msr_index_list(system: &Kvm) -> Result<Vec<u32>, VcpuStateError> {
    Ok(system
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

/// Reads the MSRs in `indices` that `fd` allows: `KVM_GET_MSRS` stops at the
/// first it cannot read, which is left out before the rest are read.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: &[u32] = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany {
            what: "MSRs",
            got: entries.len(),
            max: KVM_MAX_MSR_ENTRIES,
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        let read = read.min(chunk.len());
        out.extend_from_slice(&msrs.as_slice()[..read]);
        let mut done = read;
        if read < chunk.len() {
            // The MSR at `read` is one this vCPU cannot read: skip it.
            tracing::debug!("MSR {:#x} cannot be read; not saved", chunk[read]);
            done += 1;
        }
        rest = &rest[done..];
    }
    Ok(out)
}

impl VcpuState {
    /// Reads the state of a vCPU that is out of `KVM_RUN`. `msr_indices` is
    /// [`msr_index_list`].
    pub fn save(fd: &VcpuFd, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        // First: reading the MP state makes KVM deliver what the local APIC holds
        // pending into the state read after it.
        let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let debug_regs = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        let mut msrs = read_msrs(fd, msr_indices)?;
        let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let tsc_khz = fd.get_tsc_khz().ok();
        fix_tsc_deadline(&mut msrs);
        Ok(VcpuState {
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            events,
            tsc_khz,
        })
    }

    /// Writes the state into a new vCPU that has not run.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::TooMany {
            what: "CPUID entries",
            got: self.cpuid.len(),
            max: KVM_MAX_CPUID_ENTRIES,
        })?;
        fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz {
            // The host runs the guest's TSC at the saved rate (TSC scaling) or
            // refuses, in which case the guest's calibration is off: say so.
            if fd.get_tsc_khz().ok() != Some(khz) {
                if let Err(e) = fd.set_tsc_khz(khz) {
                    tracing::warn!("the guest's TSC ran at {khz} kHz and cannot here: {e}");
                }
            }
        }
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: a legacy XSAVE area read by KVM_GET_XSAVE, the size KVM_SET_XSAVE
        // reads; the guest's extended state is restored only on a host whose
        // features CPUID (set above) allows.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        for chunk in self.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError::TooMany {
                what: "MSRs",
                got: chunk.len(),
                max: KVM_MAX_MSR_ENTRIES,
            })?;
            let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if set < chunk.len() {
                return Err(VcpuStateError::MsrRefused {
                    index: chunk[set].index,
                    set,
                    total: self.msrs.len(),
                });
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        // Tells the guest's kvm-clock the vCPU was stopped, so its soft-lockup
        // watchdog does not take the pause for a hang. Not every host has it.
        if let Err(e) = fd.kvmclock_ctrl() {
            tracing::debug!("KVM_KVMCLOCK_CTRL: {e}");
        }
        Ok(())
    }
}

/// A TSC deadline of 0 (none armed when the snapshot was taken) is set to the
/// TSC, so that the first timer interrupt fires at once after restore instead of
/// never.
fn fix_tsc_deadline(msrs: &mut [kvm_msr_entry]) {
    let tsc = msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data);
    if let (Some(tsc), Some(deadline)) = (
        tsc,
        msrs.iter_mut()
            .find(|m| m.index == MSR_IA32_TSC_DEADLINE && m.data == 0),
    ) {
        deadline.data = tsc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn an_unarmed_tsc_deadline_fires_after_restore() {
        let mut msrs = [msr(MSR_IA32_TSC, 12345), msr(MSR_IA32_TSC_DEADLINE, 0)];
        fix_tsc_deadline(&mut msrs);
        assert_eq!(msrs[1].data, 12345);
        let mut armed = [msr(MSR_IA32_TSC, 12345), msr(MSR_IA32_TSC_DEADLINE, 99)];
        fix_tsc_deadline(&mut armed);
        assert_eq!(armed[1].data, 99, "an armed deadline is kept");
    }
}
