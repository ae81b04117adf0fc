//! What the fuzz targets share: guest RAM filled from the fuzz input, split
//! virtqueues at fixed places in it, and a device driven on a real event loop, so
//! the fuzzer plays a hostile guest driver that controls every byte of the rings
//! and buffers (descriptor addresses, lengths, flags, chains, indices).
//!
//! Layout of guest RAM (`MEM_SIZE` bytes, the input copied from address 0):
//! queue `i` has its descriptor table at `i * QUEUE_STRIDE`, its available ring at
//! `+ 0x100` and its used ring at `+ 0x200` (`QUEUE_SIZE` entries each); buffers
//! usually sit from `DATA_START` on. `scripts/fuzz-seeds.py` writes seeds this way.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmlet_vmm::devices::virtio::{IrqTrigger, VirtioDevice};

/// Guest RAM size: small, so that most guest addresses are outside it too.
pub const MEM_SIZE: usize = 0x1_0000;
/// Entries of each virtqueue.
pub const QUEUE_SIZE: u16 = 16;
/// Distance between two queues' rings.
pub const QUEUE_STRIDE: u64 = 0x400;
/// Where the seeds put buffers.
pub const DATA_START: u64 = 0x1000;

/// Guest RAM holding `image` from address 0 (cut at `MEM_SIZE`), zero after it.
pub fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("mapping guest RAM");
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("writing guest RAM");
    mem
}

/// Ready virtqueue `index` of `QUEUE_SIZE` entries at its place in guest RAM.
pub fn queue(index: usize, max_size: u16) -> Queue {
    let base = index as u64 * QUEUE_STRIDE;
    let mut q = Queue::new(max_size).expect("queue size");
    q.set_size(QUEUE_SIZE.min(max_size));
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(base);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(base + 0x100);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(base + 0x200);
    q.set_used_ring_address(lo, hi);
    q.set_ready(true);
    q
}

/// Activates `device` with all its queues in `mem`, kicks every queue and runs the
/// device's event loop until nothing is pending (at most `rounds` turns). Returns
/// the device, for targets that look at it afterwards.
pub fn run_device<D>(device: D, mem: &GuestMemoryMmap, rounds: usize) -> Arc<Mutex<D>>
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let device = Arc::new(Mutex::new(device));
    let irq = Arc::new(IrqTrigger::new().expect("irq eventfd"));
    {
        let mut dev = device.lock().expect("device lock");
        let queues = dev
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, max)| queue(i, *max))
            .collect();
        dev.activate(mem.clone(), queues, irq)
            .expect("activating the device");
    }
    let mut em = EventManager::<Arc<Mutex<D>>>::new().expect("event loop");
    em.add_subscriber(device.clone());
    for evt in device.lock().expect("device lock").queue_events() {
        evt.write(1).expect("kicking a queue");
    }
    for _ in 0..rounds {
        if em.run_with_timeout(0).expect("event loop turn") == 0 {
            break;
        }
    }
    device
}
