//! Layer streams that declare huge headers or inflate enormously are refused while the
//! process's memory stays bounded. Alone in this test binary: peak RSS is per process.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};

use vmlet_agent::images::unpack::{UnpackError, Unpacker};
use vmlet_agent::images::ImageLimits;

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    usage.max_rss() as u64 * 1024
}

/// A tar stream: one header declaring `size` bytes of `kind`, then zeros without end
/// (never held in memory).
struct Declared {
    header: Vec<u8>,
    pos: usize,
}

impl Declared {
    fn new(kind: tar::EntryType, size: u64) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_path("x").unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_cksum();
        Declared {
            header: h.as_bytes().to_vec(),
            pos: 0,
        }
    }
}

impl Read for Declared {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.header.len() {
            let n = (self.header.len() - self.pos).min(out.len());
            out[..n].copy_from_slice(&self.header[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        out.fill(0);
        Ok(out.len())
    }
}

fn limit_key(r: Result<(), UnpackError>) -> &'static str {
    match r {
        Err(UnpackError::Limit(l)) => l.key,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn huge_pax_and_long_name_headers_are_refused_in_bounded_memory() {
    let root = tempfile::tempdir().unwrap();
    let before = peak_rss();
    for kind in [
        tar::EntryType::XHeader,
        tar::EntryType::GNULongName,
        tar::EntryType::GNULongLink,
    ] {
        let unpacker = Unpacker::new(root.path(), ImageLimits::default());
        let r = unpacker.apply(Declared::new(kind, 1 << 30));
        assert_eq!(limit_key(r), "max_tar_header_bytes", "{kind:?}");
    }
    let grew = peak_rss().saturating_sub(before);
    assert!(grew < 64 << 20, "peak RSS grew by {grew} bytes");
}

/// A compressed stream of a tar holding one file of `size` zero bytes, made without
/// holding the uncompressed tar.
fn bomb<W: Write>(mut enc: W, size: u64) -> W {
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc
}

#[test]
fn gzip_and_zstd_bombs_stop_at_the_byte_cap() {
    let limits = ImageLimits {
        max_unpacked_bytes: 4 << 20,
        ..ImageLimits::default()
    };
    let size = 32 << 20;
    let gz = bomb(
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
        size,
    )
    .finish()
    .unwrap();
    let zst = bomb(zstd::Encoder::new(Vec::new(), 19).unwrap(), size)
        .finish()
        .unwrap();
    assert!(gz.len() < (1 << 20) && zst.len() < (1 << 20));
    let root = tempfile::tempdir().unwrap();
    let r = Unpacker::new(root.path(), limits).apply(flate2::read::MultiGzDecoder::new(&gz[..]));
    assert_eq!(limit_key(r), "max_unpacked_bytes");
    let root = tempfile::tempdir().unwrap();
    let r = Unpacker::new(root.path(), limits).apply(zstd::Decoder::new(&zst[..]).unwrap());
    assert_eq!(limit_key(r), "max_unpacked_bytes");
}
