//! virtio-vsock: packets (44-byte header, payload) the guest queues on the TX
//! queue, answered on the RX queue, through the whole device and its connection
//! muxer; host ports are unix sockets next to the device's, none listening.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmlet_fuzz::{guest_memory, run_device};
use vmlet_vmm::devices::virtio::vsock::Vsock;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("socket dir"))
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory(data);
    // Removed again when the device is dropped at the end of the run.
    let vsock = Vsock::new(3, &dir().path().join("v.sock")).expect("vsock device");
    run_device(vsock, &mem, 8);
});
