//! virtio-rng: guest buffers filled with random bytes, through the whole device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmlet_fuzz::{guest_memory, run_device};
use vmlet_vmm::devices::virtio::rng::Rng;

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory(data);
    run_device(Rng::new().expect("rng device"), &mem, 4);
});
