//! virtio-balloon: free page reports (whose pages the device drops from the host)
//! and the other queues, through the whole device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmlet_fuzz::{guest_memory, run_device};
use vmlet_vmm::devices::virtio::balloon::Balloon;

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory(data);
    run_device(Balloon::new().expect("balloon device"), &mem, 4);
});
