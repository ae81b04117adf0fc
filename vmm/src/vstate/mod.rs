//! KVM state: the VM file descriptor, guest memory and vCPU threads.

pub mod memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
