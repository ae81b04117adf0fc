//! virtio-net: transmit chains read into a frame (virtio-net header first) and
//! frames written into guest receive buffers, through the functions the device
//! runs on each chain (the tap itself is the kernel's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmlet_fuzz::{guest_memory, queue};
use vmlet_vmm::devices::virtio::drain_queue;
use vmlet_vmm::devices::virtio::net::{read_tx_frame, write_rx_frame, MAX_FRAME, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory(data);
    // Receive: a minimal frame, then one of the largest size, into queue 0.
    let mut rxq = queue(0, 256);
    let frames = [vec![0u8; VNET_HDR_LEN + 60], vec![0xa5u8; MAX_FRAME]];
    let mut next = frames.iter().cycle().take(2 * 16);
    drain_queue("virtio-net", &mut rxq, &mem, |chain, mem| {
        match next.next() {
            Some(frame) => write_rx_frame(chain, mem, frame),
            None => 0,
        }
    });
    // Transmit: every chain of queue 1.
    let mut txq = queue(1, 256);
    let mut buf = vec![0u8; MAX_FRAME];
    drain_queue("virtio-net", &mut txq, &mem, |chain, mem| {
        if let Some(len) = read_tx_frame(chain, mem, &mut buf) {
            assert!((VNET_HDR_LEN..=MAX_FRAME).contains(&len));
        }
        0
    });
});
