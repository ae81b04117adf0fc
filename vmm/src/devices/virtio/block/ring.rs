//! A drive's activated queue, shared by the event loop (which takes requests) and
//! whoever finishes them (a worker thread, or the event loop for io_uring).

use crate::devices::virtio::{device_error, IrqTrigger, RateLimit, INT_VRING};
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// The activated queue and what its driver sees it through.
pub(super) struct Ring {
    pub queue: Mutex<Queue>,
    pub mem: Arc<GuestMemoryMmap>,
    pub irq: Arc<IrqTrigger>,
}

impl Ring {
    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns request `head`, `len` bytes written into it, to the driver.
    pub fn complete(&self, head: u16, len: u32) {
        if self.add_used(head, len) {
            self.notify();
        }
    }

    /// Returns request `head` to the driver without telling it; false if the used
    /// ring cannot take it.
    pub fn add_used(&self, head: u16, len: u32) -> bool {
        if let Err(e) = self.lock().add_used(&*self.mem, head, len) {
            static USED_RING: RateLimit = RateLimit::new();
            device_error(
                &USED_RING,
                "virtio-blk",
                &format_args!("returning used descriptor {head}: {e}"),
            );
            return false;
        }
        true
    }

    /// Interrupts the driver for the requests returned, if it asked to be.
    pub fn notify(&self) {
        if self.lock().needs_notification(&*self.mem).unwrap_or(true) {
            self.irq.trigger(INT_VRING);
        }
    }
}
