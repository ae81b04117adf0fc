//! Device models. Devices know only the traits they implement and the guest
//! memory they touch; the builder wires them to buses, interrupts and the event
//! loop.

pub mod bus;
pub mod legacy;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an `EventFd` registered with KVM as an irqfd.
#[derive(Debug)]
pub struct Trigger(pub EventFd);

impl vm_superio::Trigger for Trigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl Trigger {
    /// A new non-blocking trigger.
    pub fn new() -> std::io::Result<Self> {
        Ok(Trigger(EventFd::new(libc::EFD_NONBLOCK)?))
    }
}
