//! Block I/O probe (`scripts/bench-blk.sh` runs it in a pod's guest and on the host):
//! one phase on FILE per run, so that a caller can read the VMM's counters around
//! each: `seq_write` (creates FILE: MIB MiB in 1 MiB requests, then `fdatasync`),
//! `seq_read` (reads them back), `rand_read` (COUNT random 4 KiB reads),
//! `rand_write` (COUNT random 4 KiB writes, then `fdatasync`), or `none` (nothing:
//! what a run itself costs). With `--direct` every request bypasses the page cache
//! (`O_DIRECT`), so that in a guest each one reaches the virtio-blk device. Prints
//! `seq_write_mib_s=`, `seq_read_mib_s=`, `rand_read_iops=` or `rand_write_iops=`.
//! Built statically: the guest image holds no C library.
//!
//! Usage: vmlet-blk-probe FILE MIB COUNT PHASE [--direct]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

const MIB: usize = 1 << 20;
const SMALL: usize = 4096;
/// `O_DIRECT` needs buffers, offsets and lengths aligned to the logical block size.
const ALIGN: usize = 4096;

/// A buffer of `len` bytes aligned to `ALIGN`, inside a larger allocation.
struct Aligned {
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + ALIGN];
        let at = raw.as_ptr().align_offset(ALIGN);
        Aligned { raw, at, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + self.len]
    }
}

/// xorshift64: reproducible offsets without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn fail(what: &str, e: std::io::Error) -> ! {
    eprintln!("vmlet-blk-probe: {what}: {e}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(mib), Some(count), Some(phase)) = (
        args.get(1),
        args.get(2).and_then(|a| a.parse::<usize>().ok()),
        args.get(3).and_then(|a| a.parse::<usize>().ok()),
        args.get(4),
    ) else {
        eprintln!("usage: vmlet-blk-probe FILE MIB COUNT PHASE [--direct]");
        std::process::exit(2);
    };
    let direct = args.iter().any(|a| a == "--direct");
    let mib = mib.max(1);
    if phase == "none" {
        return;
    }
    let create = phase == "seq_write";
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(create).truncate(create);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let f: File = opts.open(path).unwrap_or_else(|e| fail(path, e));
    let mut buf = Aligned::new(MIB);
    for (i, b) in buf.get().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let blocks = (mib * MIB / SMALL) as u64;
    let mut small = Aligned::new(SMALL);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    let secs = || t.elapsed().as_secs_f64();
    match phase.as_str() {
        "seq_write" => {
            for i in 0..mib {
                f.write_all_at(buf.get(), (i * MIB) as u64)
                    .unwrap_or_else(|e| fail("sequential write", e));
            }
            f.sync_data().unwrap_or_else(|e| fail("fdatasync", e));
            println!("seq_write_mib_s={:.1}", mib as f64 / secs());
        }
        "seq_read" => {
            for i in 0..mib {
                f.read_exact_at(buf.get(), (i * MIB) as u64)
                    .unwrap_or_else(|e| fail("sequential read", e));
            }
            println!("seq_read_mib_s={:.1}", mib as f64 / secs());
        }
        "rand_read" => {
            for _ in 0..count {
                let at = rng.below(blocks) * SMALL as u64;
                f.read_exact_at(small.get(), at)
                    .unwrap_or_else(|e| fail("random read", e));
            }
            println!("rand_read_iops={:.0}", count as f64 / secs());
        }
        "rand_write" => {
            for _ in 0..count {
                let at = rng.below(blocks) * SMALL as u64;
                f.write_all_at(small.get(), at)
                    .unwrap_or_else(|e| fail("random write", e));
            }
            f.sync_data().unwrap_or_else(|e| fail("fdatasync", e));
            println!("rand_write_iops={:.0}", count as f64 / secs());
        }
        other => {
            eprintln!("vmlet-blk-probe: unknown phase {other:?}");
            std::process::exit(2);
        }
    }
}
