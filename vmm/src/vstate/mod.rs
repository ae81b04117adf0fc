//! KVM state: the VM file descriptor, guest memory and vCPU threads.

pub mod memory;
pub mod vcpu;
pub mod vm;
