//! vmlet-vmm: the virtual machine monitor behind every vmlet pod.
//!
//! Layers, lowest first; each imports only those below it:
//! `arch` (boot layout) → `vstate` (KVM VM, vCPUs, memory) → `devices` →
//! `config` → `builder` (config → running VM) → `runner` (event loop, control
//! socket) → `cli`. The configuration and control-protocol types come from
//! `vmlet-vmm-api`, which the programs that start the VMM share.

pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod devices;
pub mod exit_record;
pub mod image;
pub mod log_cap;
pub mod runner;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod uds;
pub mod vstate;
