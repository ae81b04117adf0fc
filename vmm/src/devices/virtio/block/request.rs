//! One virtio-blk request: a 16-byte header the device reads, data buffers, and
//! a status byte the device writes last (virtio 1.2, 5.2.6). Everything here is
//! guest-controlled: lengths, sectors and descriptor layouts are checked and a bad
//! request gets an error status, never a crash.

use super::disk::{Disk, SECTOR_SIZE};
use crate::counters;
use crate::devices::virtio::{device_error, RateLimit};
use std::io::{Read, Write};
use std::ops::Deref;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

/// Length of the serial number returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = 20;

pub(super) const VIRTIO_BLK_T_IN: u32 = 0;
pub(super) const VIRTIO_BLK_T_OUT: u32 = 1;
pub(super) const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_T_DISCARD: u32 = 11;
const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: the zeroed range may be freed.
const FLAG_UNMAP: u32 = 1;
/// Size of one `virtio_blk_discard_write_zeroes` segment.
const SEGMENT_LEN: usize = 16;
/// Segments a discard or write-zeroes request may carry (`max_discard_seg`,
/// `max_write_zeroes_seg`).
pub const MAX_SEGMENTS: u32 = 16;
/// Sectors one segment may cover (`max_discard_sectors`, `max_write_zeroes_sectors`):
/// 2 GiB.
pub const MAX_SEGMENT_SECTORS: u32 = 1 << 22;
pub(super) const VIRTIO_BLK_S_OK: u8 = 0;
pub(super) const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Bounce buffer size: requests are copied through it in pieces.
const CHUNK: usize = 128 * 1024;

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Status and number of data bytes written into the chain.
    Done(u8, usize),
}

pub(super) fn check_range(disk: &Disk, sector: u64, len: usize) -> bool {
    let Some(start) = sector.checked_mul(SECTOR_SIZE) else {
        return false;
    };
    (len as u64).is_multiple_of(SECTOR_SIZE)
        && start
            .checked_add(len as u64)
            .is_some_and(|end| end <= disk.sectors() * SECTOR_SIZE)
}

/// Host I/O errors of the drives (the guest sees IOERR; the host log says why).
static HOST_IO: RateLimit = RateLimit::new();

/// Logs a host I/O error of drive `id`.
pub(super) fn host_io_error(id: &str, op: &str, offset: u64, e: &std::io::Error) {
    device_error(
        &HOST_IO,
        "virtio-blk",
        &format_args!("drive {id}: {op} at byte {offset}: {e}"),
    );
}

fn read_into(
    id: &str,
    disk: &Disk,
    sector: u64,
    out: &mut impl Write,
    len: usize,
    buf: &mut [u8],
) -> Outcome {
    if !check_range(disk, sector, len) || buf.is_empty() {
        return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        let offset = sector * SECTOR_SIZE + done as u64;
        if let Err(e) = disk.read_at(&mut buf[..n], offset) {
            host_io_error(id, "read", offset, &e);
            return Outcome::Done(VIRTIO_BLK_S_IOERR, done);
        }
        if out.write_all(&buf[..n]).is_err() {
            return Outcome::Done(VIRTIO_BLK_S_IOERR, done);
        }
        done += n;
    }
    Outcome::Done(VIRTIO_BLK_S_OK, done)
}

fn write_from(
    id: &str,
    disk: &Disk,
    sector: u64,
    input: &mut impl Read,
    len: usize,
    buf: &mut [u8],
) -> Outcome {
    if disk.read_only() || !check_range(disk, sector, len) || buf.is_empty() {
        return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        let offset = sector * SECTOR_SIZE + done as u64;
        if input.read_exact(&mut buf[..n]).is_err() {
            return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
        }
        if let Err(e) = disk.write_at(&buf[..n], offset) {
            host_io_error(id, "write", offset, &e);
            return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
        }
        done += n;
    }
    Outcome::Done(VIRTIO_BLK_S_OK, 0)
}

/// Frees (discard) or zeroes the ranges listed in the request's data. Every segment is
/// checked before any is applied, so a bad request changes nothing. Zeroing punches a
/// hole too (it reads back as zeros), or writes zeros where the file cannot have holes.
fn discard(
    id: &str,
    disk: &Disk,
    input: &mut impl Read,
    len: usize,
    zeroes: bool,
    buf: &mut [u8],
) -> Outcome {
    if disk.read_only()
        || len == 0
        || !len.is_multiple_of(SEGMENT_LEN)
        || len / SEGMENT_LEN > MAX_SEGMENTS as usize
    {
        return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
    }
    let mut ranges = [(0u64, 0u64); MAX_SEGMENTS as usize];
    let count = len / SEGMENT_LEN;
    for range in ranges.iter_mut().take(count) {
        let mut seg = [0u8; SEGMENT_LEN];
        if input.read_exact(&mut seg).is_err() {
            return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
        }
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&seg[..8]);
        let sector = u64::from_le_bytes(sector);
        let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        // Unknown flags, and unmap on a discard, are unsupported (virtio 1.2, 5.2.6.2).
        if flags & !FLAG_UNMAP != 0 || (!zeroes && flags != 0) {
            return Outcome::Done(VIRTIO_BLK_S_UNSUPP, 0);
        }
        let bytes = u64::from(sectors) * SECTOR_SIZE;
        if sectors > MAX_SEGMENT_SECTORS || !check_range(disk, sector, bytes as usize) {
            return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
        }
        *range = (sector * SECTOR_SIZE, bytes);
    }
    for &(offset, bytes) in &ranges[..count] {
        match disk.punch_hole(offset, bytes) {
            Ok(()) => {}
            // A discard is a hint: a file that cannot free space keeps its data.
            Err(_) if !zeroes => {}
            Err(_) => {
                buf.fill(0);
                let mut done = 0u64;
                while done < bytes {
                    let n = (bytes - done).min(buf.len() as u64) as usize;
                    if let Err(e) = disk.write_at(&buf[..n], offset + done) {
                        host_io_error(id, "write zeroes", offset + done, &e);
                        return Outcome::Done(VIRTIO_BLK_S_IOERR, 0);
                    }
                    done += n as u64;
                }
            }
        }
    }
    Outcome::Done(VIRTIO_BLK_S_OK, 0)
}

/// A bounce buffer for [`execute`], allocated once per drive.
pub fn bounce_buffer() -> Vec<u8> {
    vec![0u8; CHUNK]
}

/// Whether the request in `chain` is a flush, which must wait for the requests
/// queued before it. Read again when it runs: a driver that rewrites the header in
/// between only disorders its own requests.
pub fn is_flush<M: Clone + Deref<Target = GuestMemoryMmap>>(
    chain: &DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> bool {
    let mut kind = [0u8; 4];
    chain
        .clone()
        .reader(mem)
        .is_ok_and(|mut r| r.read_exact(&mut kind).is_ok())
        && u32::from_le_bytes(kind) == VIRTIO_BLK_T_FLUSH
}

/// Executes the request in `chain` against `disk`, copying data through `buf`
/// (from [`bounce_buffer`]); returns the bytes written into the chain (data plus
/// the status byte), or 0 if the chain has no room for a status byte at all.
pub fn execute<M: Clone + Deref<Target = GuestMemoryMmap>>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    disk: &Disk,
    id: &str,
    buf: &mut [u8],
    counts: &counters::Block,
) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem)) else {
        return 0;
    };
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        tracing::debug!("virtio-blk request without a status byte");
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(data_len) else {
        return 0;
    };
    let mut header = [0u8; 16];
    let outcome = if reader.read_exact(&mut header).is_err() {
        Outcome::Done(VIRTIO_BLK_S_IOERR, 0)
    } else {
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match kind {
            VIRTIO_BLK_T_IN => {
                let done = read_into(id, disk, sector, &mut writer, data_len, buf);
                if let Outcome::Done(VIRTIO_BLK_S_OK, n) = done {
                    counts.read_ops.inc();
                    counts.read_bytes.add(n as u64);
                }
                done
            }
            VIRTIO_BLK_T_OUT => {
                let len = reader.available_bytes();
                let done = write_from(id, disk, sector, &mut reader, len, buf);
                if let Outcome::Done(VIRTIO_BLK_S_OK, _) = done {
                    counts.write_ops.inc();
                    counts.write_bytes.add(len as u64);
                }
                done
            }
            VIRTIO_BLK_T_FLUSH => match disk.flush() {
                Ok(()) => {
                    counts.flush_ops.inc();
                    Outcome::Done(VIRTIO_BLK_S_OK, 0)
                }
                Err(e) => {
                    host_io_error(id, "flush", 0, &e);
                    Outcome::Done(VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let len = reader.available_bytes();
                let zeroes = kind == VIRTIO_BLK_T_WRITE_ZEROES;
                discard(id, disk, &mut reader, len, zeroes, buf)
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut serial = [0u8; ID_BYTES];
                let n = id.len().min(ID_BYTES);
                serial[..n].copy_from_slice(&id.as_bytes()[..n]);
                let n = data_len.min(ID_BYTES);
                match writer.write_all(&serial[..n]) {
                    Ok(()) => Outcome::Done(VIRTIO_BLK_S_OK, n),
                    Err(_) => Outcome::Done(VIRTIO_BLK_S_IOERR, 0),
                }
            }
            other => {
                tracing::debug!("unsupported virtio-blk request type {other}");
                Outcome::Done(VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    };
    let Outcome::Done(status, written) = outcome;
    if status_writer.write_all(&[status]).is_err() {
        return written as u32;
    }
    written as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn disk(sectors: usize, ro: bool) -> (tempfile::NamedTempFile, Disk) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.path(), content).unwrap();
        let d = Disk::open(f.path(), ro).unwrap();
        (f, d)
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn run(mem: &GuestMemoryMmap, d: &Disk, descs: &[RawDescriptor]) -> u32 {
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        execute(
            chain,
            mem,
            d,
            "drive-id",
            &mut bounce_buffer(),
            &counters::Block::default(),
        )
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// One discard or write-zeroes segment: sector, sectors, flags.
    type Segment = (u64, u32, u32);

    /// Writes `segs` as a discard or write-zeroes payload at DATA and runs the request;
    /// returns its status.
    fn ranges(m: &GuestMemoryMmap, d: &Disk, kind: u32, segs: &[Segment]) -> u8 {
        let mut data = Vec::new();
        for &(sector, n, flags) in segs {
            data.extend(sector.to_le_bytes());
            data.extend(n.to_le_bytes());
            data.extend(flags.to_le_bytes());
        }
        m.write_slice(&data, GuestAddress(DATA)).unwrap();
        header(m, kind, 0);
        let n = run(
            m,
            d,
            &[
                desc(HDR, 16, false),
                desc(DATA, data.len() as u32, false),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!(n, 1);
        status(m)
    }

    #[test]
    fn discard_and_write_zeroes_free_the_file_and_read_back_zeros() {
        use std::os::unix::fs::MetadataExt;
        let m = mem();
        // 1 MiB of data, all of it allocated.
        let (f, d) = disk(2048, false);
        let blocks = || std::fs::metadata(f.path()).unwrap().blocks();
        let full = blocks();
        assert!(full >= 2048, "{full} blocks");
        let status = ranges(&m, &d, VIRTIO_BLK_T_DISCARD, &[(0, 512, 0), (1024, 512, 0)]);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let zeroes = ranges(
            &m,
            &d,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[(512, 8, FLAG_UNMAP), (600, 8, 0)],
        );
        assert_eq!(zeroes, VIRTIO_BLK_S_OK);
        assert!(
            blocks() <= full - 1024,
            "{} of {full} blocks left",
            blocks()
        );
        let content = std::fs::read(f.path()).unwrap();
        let zero = |from: usize, sectors: usize| {
            content[from * 512..(from + sectors) * 512]
                .iter()
                .all(|&b| b == 0)
        };
        assert!(zero(0, 512) && zero(1024, 512) && zero(512, 8) && zero(600, 8));
        // Outside them the data stays.
        assert_eq!(content[520 * 512], ((520 * 512) % 251) as u8);
        assert_eq!(content[2047 * 512 + 7], ((2047 * 512 + 7) % 251) as u8);
    }

    #[test]
    fn bad_discards_change_nothing() {
        let m = mem();
        let (f, d) = disk(64, false);
        let before = std::fs::read(f.path()).unwrap();
        let too_many: Vec<Segment> = (0..=MAX_SEGMENTS as u64).map(|i| (i, 1, 0)).collect();
        let cases: [(u32, &[Segment], u8); 6] = [
            // Unmap is a write-zeroes flag; unknown flags are unsupported.
            (
                VIRTIO_BLK_T_DISCARD,
                &[(0, 8, FLAG_UNMAP)],
                VIRTIO_BLK_S_UNSUPP,
            ),
            (VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 2)], VIRTIO_BLK_S_UNSUPP),
            // A good segment before one past the end: neither is applied.
            (
                VIRTIO_BLK_T_DISCARD,
                &[(0, 8, 0), (60, 8, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                &[(u64::MAX / 256, 8, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                VIRTIO_BLK_T_DISCARD,
                &[(0, MAX_SEGMENT_SECTORS + 1, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (VIRTIO_BLK_T_DISCARD, &too_many, VIRTIO_BLK_S_IOERR),
        ];
        for (kind, segs, want) in cases {
            assert_eq!(ranges(&m, &d, kind, segs), want, "{kind} {segs:?}");
        }
        // A payload that is not whole segments, and none at all.
        header(&m, VIRTIO_BLK_T_DISCARD, 0);
        run(
            &m,
            &d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 15, false),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        run(&m, &d, &[desc(HDR, 16, false), desc(STATUS, 1, true)]);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        // A read-only drive refuses them.
        let ro = Disk::open(f.path(), true).unwrap();
        assert_eq!(
            ranges(&m, &ro, VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)]),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
    }

    #[test]
    fn read_returns_disk_content() {
        let m = mem();
        let (_f, d) = disk(8, false);
        header(&m, VIRTIO_BLK_T_IN, 2);
        let n = run(
            &m,
            &d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 1024, true),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!(n, 1025);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        let want: Vec<u8> = (1024..2048).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn write_then_flush_reaches_the_file() {
        let m = mem();
        let (f, d) = disk(8, false);
        m.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 7);
        let n = run(
            &m,
            &d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 512, false),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!((n, status(&m)), (1, VIRTIO_BLK_S_OK));
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        run(&m, &d, &[desc(HDR, 16, false), desc(STATUS, 1, true)]);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        let content = std::fs::read(f.path()).unwrap();
        assert!(content[7 * 512..].iter().all(|b| *b == 0xab));
        assert_eq!(content[7 * 512 - 1], ((7 * 512 - 1) % 251) as u8);
    }

    #[test]
    fn successful_requests_are_counted_with_their_bytes() {
        let m = mem();
        let (_f, d) = disk(8, false);
        let counts = counters::Block::default();
        let exec = |kind, sector, data: RawDescriptor| {
            header(&m, kind, sector);
            let q = MockSplitQueue::new(&m, 16);
            let descs = [desc(HDR, 16, false), data, desc(STATUS, 1, true)];
            let chain = q.build_desc_chain(&descs).unwrap();
            execute(chain, &m, &d, "d", &mut bounce_buffer(), &counts);
            status(&m)
        };
        assert_eq!(exec(VIRTIO_BLK_T_IN, 0, desc(DATA, 1024, true)), 0);
        assert_eq!(exec(VIRTIO_BLK_T_OUT, 1, desc(DATA, 512, false)), 0);
        // Past the end: refused, not counted.
        assert_ne!(exec(VIRTIO_BLK_T_IN, 8, desc(DATA, 512, true)), 0);
        assert_eq!((counts.read_ops.get(), counts.read_bytes.get()), (1, 1024));
        assert_eq!((counts.write_ops.get(), counts.write_bytes.get()), (1, 512));
    }

    #[test]
    fn out_of_range_and_unaligned_requests_fail_cleanly() {
        let m = mem();
        let (_f, d) = disk(8, false);
        for (sector, len) in [(7u64, 1024u32), (8, 512), (u64::MAX / 2, 512), (0, 100)] {
            m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            header(&m, VIRTIO_BLK_T_IN, sector);
            run(
                &m,
                &d,
                &[
                    desc(HDR, 16, false),
                    desc(DATA, len, true),
                    desc(STATUS, 1, true),
                ],
            );
            assert_eq!(status(&m), VIRTIO_BLK_S_IOERR, "sector {sector} len {len}");
        }
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let m = mem();
        let (f, d) = disk(8, true);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        run(
            &m,
            &d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 512, false),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
    }

    #[test]
    fn malformed_chains_never_panic() {
        let m = mem();
        let (_f, d) = disk(8, false);
        header(&m, VIRTIO_BLK_T_IN, 0);
        // No writable descriptor at all: nothing can be reported.
        assert_eq!(run(&m, &d, &[desc(HDR, 16, false)]), 0);
        // Short header.
        run(&m, &d, &[desc(HDR, 4, false), desc(STATUS, 1, true)]);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        // Descriptor pointing outside guest memory.
        assert_eq!(
            run(
                &m,
                &d,
                &[desc(HDR, 16, false), desc(0xffff_0000, 512, true)]
            ),
            0
        );
        // Huge length wrapping past the end of memory: the chain cannot be mapped, so
        // nothing is written, not even a status byte.
        m.write_obj(0xffu8, GuestAddress(0x3f_ffff)).unwrap();
        assert_eq!(
            run(
                &m,
                &d,
                &[desc(HDR, 16, false), desc(0x3f_ffff, u32::MAX, true)],
            ),
            0
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3f_ffff)).unwrap(), 0xff);
        // Unknown request type.
        header(&m, 99, 0);
        run(&m, &d, &[desc(HDR, 16, false), desc(STATUS, 1, true)]);
        assert_eq!(status(&m), VIRTIO_BLK_S_UNSUPP);
        // GET_ID.
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let n = run(
            &m,
            &d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 20, true),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!(n, 21);
        let mut id = [0u8; 8];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"drive-id");
    }

    #[test]
    fn descriptor_loop_is_bounded() {
        let m = mem();
        let (_f, d) = disk(8, false);
        header(&m, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&m, 16);
        // Two descriptors pointing at each other forever.
        let a = RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1));
        let b = RawDescriptor::from(Descriptor::new(
            DATA,
            512,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            0,
        ));
        let chain = q.build_multiple_desc_chains(&[a, b]).unwrap();
        m.write_obj(0xffu8, GuestAddress(DATA + 511)).unwrap();
        // The walk stops after as many descriptors as the queue holds (16: eight
        // rounds of the loop): 8 x 512 writable bytes, of which the last is the status
        // byte. 4095 data bytes are no whole sectors: the request fails, and only its
        // status byte, at the end of the eighth `b`, is written.
        let used = execute(
            chain,
            &m,
            &d,
            "x",
            &mut bounce_buffer(),
            &Default::default(),
        );
        assert_eq!(used, 1);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Arbitrary guest-built chains: whatever the guest puts in the queue, a
    //! request completes without panicking and reports at most what the chain holds.
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_chains_never_panic(
            header in proptest::collection::vec(any::<u8>(), 16),
            kind in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
            sector in prop_oneof![0u64..16, any::<u64>()],
            descs in proptest::collection::vec(
                (0x10_0000u64..0x40_0000, prop_oneof![0u32..2048, any::<u32>()], any::<bool>()),
                1..6,
            ),
        ) {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
            let mut h = header.clone();
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(descs[0].0)).ok();
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), vec![7u8; 8 * 512]).unwrap();
            let disk = Disk::open(f.path(), false).unwrap();
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .map(|(addr, len, write)| {
                    let flags = if *write { VRING_DESC_F_WRITE as u16 } else { 0 };
                    RawDescriptor::from(Descriptor::new(*addr, *len, flags, 0))
                })
                .collect();
            let q = MockSplitQueue::new(&mem, 16);
            if let Ok(chain) = q.build_desc_chain(&raw) {
                let writable: u64 = descs.iter().filter(|d| d.2).map(|d| u64::from(d.1)).sum();
                let used = execute(
                    chain,
                    &mem,
                    &disk,
                    "fuzz",
                    &mut bounce_buffer(),
                    &Default::default(),
                );
                prop_assert!(u64::from(used) <= writable);
            }
            // The backing file never grows or shrinks.
            prop_assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 8 * 512);
        }
    }
}
