//! virtio-net: transmit chains read into a frame (virtio-net header first) and its
//! header checked, and frames written into guest receive buffers, whole or merged
//! across several, through the functions the device runs on each chain (the tap
//! itself is the kernel's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vmlet_fuzz::{guest_memory, queue};
use vmlet_vmm::devices::virtio::drain_queue;
use vmlet_vmm::devices::virtio::net::{
    check_tx, read_tx_frame, take_rx_buffers, write_rx_frame, MAX_FRAME, OFFLOADS, VNET_HDR_LEN,
};

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
    // Merged receive buffers: the same frames, taken chain by chain from queue 0
    // again (a frame that finds too few leaves the ring where it was).
    let mut rxq = queue(0, 256);
    let mut heads = Vec::new();
    for frame in frames.iter().cycle().take(8) {
        let mut frame = frame.clone();
        let before = rxq.next_avail();
        let got = take_rx_buffers(&mut rxq, &mem, &mut frame, true, &mut heads);
        if got == vmlet_vmm::devices::virtio::net::Rx::NoRoom {
            assert!(heads.is_empty() && rxq.next_avail() == before);
            break;
        }
        assert!(!heads.is_empty() && heads.len() <= 256);
    }
    // Transmit: every chain of queue 1, its header checked against offloads taken
    // from the input.
    let acked = data.first().map_or(0, |&b| u64::from(b) * 0x0101_0101) & OFFLOADS;
    let mut txq = queue(1, 256);
    let mut buf = vec![0u8; MAX_FRAME];
    drain_queue("virtio-net", &mut txq, &mem, |chain, mem| {
        if let Some(len) = read_tx_frame(chain, mem, &mut buf) {
            assert!((VNET_HDR_LEN..=MAX_FRAME).contains(&len));
            let mut hdr = [0u8; VNET_HDR_LEN];
            hdr.copy_from_slice(&buf[..VNET_HDR_LEN]);
            let _ = check_tx(&hdr, len, acked);
        }
        0
    });
});
