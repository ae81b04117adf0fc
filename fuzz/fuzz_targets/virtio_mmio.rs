//! virtio-mmio transport: a sequence of guest register reads and writes (any
//! offset, width and value; feature negotiation, queue setup, status, config
//! space) on the window of a virtio-blk device, after which the device runs the
//! queues the guest set up.
//!
//! Input: one byte N, N records of 8 bytes (`[kind, 0, offset lo, offset hi,
//! value (4 bytes LE)]`, kind bit 0: write, bits 1-2: width 1/2/4/8), then guest RAM.
#![no_main]

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vmlet_fuzz::guest_memory;
use vmlet_vmm::devices::bus::BusDevice;
use vmlet_vmm::devices::virtio::block::{Block, Disk};
use vmlet_vmm::devices::virtio::mmio::MmioTransport;
use vmlet_vmm::devices::virtio::{IrqTrigger, VirtioDevice};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let ops_len = (usize::from(n) * 8).min(rest.len());
    let (ops, image) = rest.split_at(ops_len);
    let mem = guest_memory(image);

    let file = tempfile::NamedTempFile::new().expect("disk file");
    file.as_file().set_len(64 * 1024).expect("disk size");
    let disk = Disk::open(file.path(), false).expect("opening the disk");
    let block = Arc::new(Mutex::new(
        Block::new("fuzz-disk".into(), disk).expect("block device"),
    ));
    let irq = Arc::new(IrqTrigger::new().expect("irq eventfd"));
    let mut transport = MmioTransport::new(block.clone(), mem, irq);

    for op in ops.chunks_exact(8) {
        let width = 1usize << ((op[0] >> 1) & 3);
        let offset = u64::from(u16::from_le_bytes([op[2], op[3]]));
        let value = u64::from(u32::from_le_bytes([op[4], op[5], op[6], op[7]]));
        let value = value | (value << 32);
        if op[0] & 1 == 1 {
            transport.write(offset, &value.to_le_bytes()[..width]);
        } else {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..width]);
        }
    }

    // Whatever the guest made of the device, a kick of each queue must be harmless.
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().expect("event loop");
    em.add_subscriber(block.clone());
    for evt in block.lock().expect("device lock").queue_events() {
        evt.write(1).expect("kicking a queue");
    }
    em.run_with_timeout(0).expect("event loop turn");
});
