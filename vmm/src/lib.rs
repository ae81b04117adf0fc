//! vmlet-vmm: the virtual machine monitor behind every vmlet pod.
//!
//! Layers, lowest first; each imports only those below it:
//! `arch` (boot layout) → `vstate` (KVM VM, vCPUs, memory) → `devices` →
//! `builder` (config → running VM) → `control` (the control socket) → `main`.

pub mod arch;
pub mod devices;
