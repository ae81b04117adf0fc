//! Image config blobs (OCI or Docker JSON) as the image store reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmlet_agent::images::ImageConfig;

fuzz_target!(|data: &[u8]| {
    let _ = ImageConfig::from_blob(data);
});
