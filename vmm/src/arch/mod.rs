//! x86_64 boot layout: where things live in guest memory and how the boot CPU
//! and the tables the kernel reads at boot are set up.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod pvh;
pub mod regs;
