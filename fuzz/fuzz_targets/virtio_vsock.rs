//! virtio-vsock: packets (44-byte header, payload) the guest queues on the TX
//! queue, answered on the RX queue, through the whole device and its connection
//! muxer. Host port 1024 has a listener (its socket `<uds>_1024`), so a guest
//! connection there is accepted by the kernel and carries data; other ports refuse.
#![no_main]

use std::os::unix::net::UnixListener;
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
    // Both new each run (a crash must replay from the input alone); the device
    // removes its socket when dropped.
    let port = dir().path().join("v.sock_1024");
    let _ = std::fs::remove_file(&port);
    let _listener = UnixListener::bind(&port).expect("host port listener");
    let vsock = Vsock::new(3, &dir().path().join("v.sock")).expect("vsock device");
    run_device(vsock, &mem, 8);
});
