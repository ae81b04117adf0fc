//! Image layer unpacking: two layer blobs (tar, gzip or zstd, as flattening reads
//! them; the second may white out what the first wrote) applied onto a fresh root,
//! within tight image limits.
//!
//! Input: one byte B, then the first layer (B blocks of 512 bytes) and the second
//! (the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmlet_agent::images::flatten::apply_blob;
use vmlet_agent::images::unpack::Unpacker;
use vmlet_agent::images::{Digest, ImageLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&blocks, rest)) = data.split_first() else {
        return;
    };
    let (first, second) = rest.split_at((usize::from(blocks) * 512).min(rest.len()));
    let root = tempfile::tempdir().expect("unpack root");
    let limits = ImageLimits {
        max_tar_header_bytes: 64 << 10,
        max_unpacked_bytes: 8 << 20,
        max_entries: 256,
        max_inodes: 256,
        ..ImageLimits::default()
    };
    let unpacker = Unpacker::new(root.path(), limits);
    let digest = Digest::of(b"");
    if apply_blob(&unpacker, first, &digest).is_ok() {
        let _ = apply_blob(&unpacker, second, &digest);
    }
});
