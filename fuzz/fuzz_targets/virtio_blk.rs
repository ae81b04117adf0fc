//! virtio-blk: request chains (header, data buffers, status byte) against a
//! 64 KiB read-write disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmlet_fuzz::{guest_memory, run_device};
use vmlet_vmm::devices::virtio::block::{Block, Disk};

fuzz_target!(|data: &[u8]| {
    // A disk of its own per run: a crash must replay from the input alone.
    let file = tempfile::NamedTempFile::new().expect("disk file");
    file.as_file().set_len(64 * 1024).expect("disk size");
    let disk = Disk::open(file.path(), false).expect("opening the disk");
    let mem = guest_memory(data);
    let block = Block::new("fuzz-disk".into(), disk).expect("block device");
    run_device(block, &mem, 4);
});
