//! A pod's VM: one vmlet-vmm process per pod, its disks, and the connection to its
//! guest agent. [`Vm::boot`] starts one, [`Vm::adopt`] takes over one that a previous
//! vmletd started; either way the VMM is not vmletd's child in any way that matters
//! (own process group, output to a file), so it outlives the daemon.
//!
//! Per pod (paths in [`crate::store::PodPaths`]): `scratch.ext4` (sparse ext4 for the
//! writable layers), `empty.img` (backs the image slots not in use), `console.log`
//! (serial console), `vmm.log`, and in the runtime directory the `vsock` and `ctl`
//! sockets. Images reach the guest by swapping a slot's backing file through the
//! control socket (virtio-mmio has no hotplug).

pub mod cgroup;
pub mod cgroup_stats;
pub mod disk;
mod error;
#[cfg(test)]
pub mod fake;
pub mod guest;
pub mod hypervisor;
pub mod jail;
mod vm;
pub mod vmm;

pub use error::SandboxError;
pub use guest::GuestClient;
pub use hypervisor::{Hypervisor, Processes};
pub use vm::{read_exit_record, tail, Vm, VmControl, VmmExit};
pub use vmm::VmmCommand;
