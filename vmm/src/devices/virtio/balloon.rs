//! virtio-balloon, for free page reporting only (`VIRTIO_BALLOON_F_REPORTING`): the
//! guest hands over blocks of memory it has freed (2 MiB blocks with Linux's default
//! `page_reporting_order`), and the VMM drops them from the host with
//! `MADV_DONTNEED`, so that an idle guest holds only the memory it uses. The guest
//! reuses a reported block at will; its next touch faults in a fresh page.
//!
//! The balloon itself is never inflated (`num_pages` stays 0): the inflate and deflate
//! queues, which the driver always sets up, are drained and otherwise ignored.

use super::{
    device_type, drain_queue, read_config_bytes, take_queues, ActivateError, Chain, IrqTrigger,
    VirtioDevice, INT_VRING,
};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// The device reports freed pages (virtio spec 5.5.3).
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// inflateq, deflateq, reporting_vq: with only REPORTING among the optional
/// features, the reporting queue is the third.
const QUEUE_SIZES: &[u16] = &[64, 64, 64];
const REPORTING: usize = 2;
const PAGE: u64 = 4096;

struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 3],
    irq: Arc<IrqTrigger>,
}

/// The balloon device.
pub struct Balloon {
    queue_evts: Vec<EventFd>,
    /// `actual`, as the driver last wrote it (config offset 4).
    actual: u32,
    active: Option<Active>,
}

impl Balloon {
    /// A new, inactive device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Balloon {
            queue_evts: (0..QUEUE_SIZES.len())
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<_, _>>()?,
            actual: 0,
            active: None,
        })
    }

    fn process(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut reported = 0u64;
        let notify = if index == REPORTING {
            drain_queue(
                "virtio-balloon",
                &mut a.queues[index],
                &a.mem,
                |chain, mem| {
                    reported += release(chain, mem);
                    0
                },
            )
        } else {
            drain_queue("virtio-balloon", &mut a.queues[index], &a.mem, |_, _| 0)
        };
        if reported > 0 {
            tracing::debug!("balloon: the guest gave back {} KiB", reported >> 10);
        }
        if notify {
            a.irq.trigger(INT_VRING);
        }
    }
}

/// Drops every whole host page of each device-writable buffer in `chain` from the
/// host. A buffer outside guest RAM, or across the end of a RAM region, is skipped.
/// Returns the bytes dropped.
pub fn release(chain: Chain<'_>, mem: &GuestMemoryMmap) -> u64 {
    let mut dropped = 0;
    for desc in chain {
        if !desc.is_write_only() {
            continue;
        }
        // Whole pages inside the buffer only: its edges may share a page with memory
        // in use.
        let start = desc.addr().0.next_multiple_of(PAGE);
        let end = (desc.addr().0 + u64::from(desc.len())) & !(PAGE - 1);
        if end <= start {
            continue;
        }
        let len = (end - start) as usize;
        let Ok(slice) = mem.get_slice(GuestAddress(start), len) else {
            tracing::debug!("balloon: report of {len} bytes at {start:#x} is not guest RAM");
            continue;
        };
        let guard = slice.ptr_guard_mut();
        // SAFETY: the range lies inside one guest RAM mapping that `mem` owns;
        // MADV_DONTNEED only discards its contents, which the guest has declared free.
        let r = unsafe { libc::madvise(guard.as_ptr().cast(), len, libc::MADV_DONTNEED) };
        if r == 0 {
            dropped += len as u64;
        } else {
            tracing::warn!(
                "balloon: MADV_DONTNEED of {len} bytes at {start:#x}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    dropped
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // num_pages (always 0: never inflate), actual.
        let mut config = [0u8; 8];
        config[4..].copy_from_slice(&self.actual.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 && data.len() == 4 {
            self.actual = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        let queues = take_queues(queues)?;
        self.active = Some(Active { mem, queues, irq });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.actual = 0;
    }
}

impl MutEventSubscriber for Balloon {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        if !events.event_set().contains(EventSet::IN) || index >= self.queue_evts.len() {
            return;
        }
        let _ = self.queue_evts[index].read();
        Balloon::process(self, index);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("registering balloon queue {i} event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const FREE: u64 = 0x20_0000;

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn reported_pages_are_dropped_and_the_rest_kept() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        mem.write_slice(&[0xaa; 0x10_0000], GuestAddress(FREE))
            .unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[
                // Unaligned edges: only the whole pages inside go.
                desc(FREE + 100, 3 * PAGE as u32, true),
                // Read-only, outside RAM, empty: ignored.
                desc(FREE + 0x8_0000, PAGE as u32, false),
                desc(0x100_0000, PAGE as u32, true),
                desc(FREE + 0x9_0000, 0, true),
            ])
            .unwrap();
        assert_eq!(release(chain, &mem), 2 * PAGE);
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(FREE)).unwrap();
        assert!(
            page.iter().all(|&b| b == 0xaa),
            "first, partly reported page kept"
        );
        for p in [FREE + PAGE, FREE + 2 * PAGE] {
            mem.read_slice(&mut page, GuestAddress(p)).unwrap();
            assert!(page.iter().all(|&b| b == 0), "page {p:#x} not dropped");
        }
        mem.read_slice(&mut page, GuestAddress(FREE + 0x8_0000))
            .unwrap();
        assert!(page.iter().all(|&b| b == 0xaa), "read-only buffer dropped");
    }

    #[test]
    fn config_holds_actual_and_never_asks_to_inflate() {
        let mut b = Balloon::new().unwrap();
        assert_eq!(b.device_type(), 5);
        assert_ne!(b.avail_features() & VIRTIO_BALLOON_F_REPORTING, 0);
        b.write_config(4, &7u32.to_le_bytes());
        let mut data = [0xffu8; 8];
        b.read_config(0, &mut data);
        assert_eq!(data, [0, 0, 0, 0, 7, 0, 0, 0]);
        b.reset();
        b.read_config(4, &mut data[..4]);
        assert_eq!(&data[..4], &[0, 0, 0, 0]);
    }
}
