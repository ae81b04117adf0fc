//! Requests served through io_uring: the event loop hands reads, writes and flushes
//! to the kernel straight from and into guest memory (no bounce buffer, no thread of
//! ours), and finishes them when the ring's completion eventfd fires. A flush is
//! submitted with `IO_DRAIN`: it starts once every request before it has finished,
//! and none after it starts before it ends.
//!
//! io_uring runs its operations outside the seccomp filter, so the ring is built
//! before the filter is installed and then locked down with the kernel's
//! restrictions: only `READV`, `WRITEV` and `FSYNC` on the drive's file (a fixed
//! file, required on every entry), and no registration but replacing that file (a
//! drive swap). The filter allows no `io_uring_setup`: the VMM cannot make another.
//!
//! Only requests in the layout every Linux driver uses (a 16-byte header
//! descriptor, data descriptors, a 1-byte status descriptor) take this path; any
//! other request runs synchronously through `request::execute`.

use super::disk::{Disk, SECTOR_SIZE};
use super::request;
use super::ring::Ring;
use crate::counters;
use io_uring::{opcode, register::Restriction, squeue, types, IoUring};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// `IORING_REGISTER_FILES_UPDATE`: the one registration a locked ring allows (and
/// the seccomp filter lets through).
pub const REGISTER_FILES_UPDATE: u8 = 6;
/// The drive's file in the ring's fixed-file table.
const DISK: types::Fixed = types::Fixed(0);

/// What a submitted request does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Read,
    Write,
    Flush,
}

/// A request in the kernel's hands.
struct InFlight {
    op: Op,
    head: u16,
    status: GuestAddress,
    /// Data bytes the operation must move.
    bytes: usize,
    offset: u64,
    /// Read by the kernel until the request completes.
    _iovecs: Vec<libc::iovec>,
    /// Keeps the guest memory the iovecs point into mapped until then.
    ring: Arc<Ring>,
}

// SAFETY: the iovecs point into guest memory held by `ring`; they are only read by
// the kernel, and the entry moves between threads only with the device (behind its
// lock).
unsafe impl Send for InFlight {}

/// A request taken apart for the ring, or why it runs synchronously.
pub enum Prepared {
    Submit(PreparedIo),
    Execute,
}

/// A read, write or flush ready to submit.
pub struct PreparedIo {
    op: Op,
    head: u16,
    status: GuestAddress,
    bytes: usize,
    offset: u64,
    iovecs: Vec<libc::iovec>,
}

/// One drive's ring.
pub struct Uring {
    ring: IoUring,
    /// Indexed by an entry's `user_data`.
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
}

/// Why a drive's ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("creating an io_uring: {0}")]
    Setup(std::io::Error),
    #[error("registering the drive's file and eventfd with its io_uring: {0}")]
    Register(std::io::Error),
    #[error("restricting the drive's io_uring: {0}")]
    Restrict(std::io::Error),
}

impl Uring {
    /// A ring for up to `depth` requests on `disk` that signals `completed` when
    /// requests complete, locked down (see the module's comment).
    pub fn new(disk: &Disk, depth: u32, completed: &EventFd) -> Result<Self, UringError> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(depth)
            .map_err(UringError::Setup)?;
        let sub = ring.submitter();
        sub.register_files(&[disk.file().as_raw_fd()])
            .map_err(UringError::Register)?;
        sub.register_eventfd(completed.as_raw_fd())
            .map_err(UringError::Register)?;
        let fixed = squeue::Flags::FIXED_FILE.bits();
        sub.register_restrictions(&mut [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_allowed(squeue::Flags::IO_DRAIN.bits()),
            Restriction::sqe_flags_required(fixed),
            Restriction::register_op(REGISTER_FILES_UPDATE),
        ])
        .map_err(UringError::Restrict)?;
        sub.register_enable_rings().map_err(UringError::Restrict)?;
        let depth = depth as usize;
        Ok(Uring {
            ring,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
        })
    }

    /// Requests submitted and not finished.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.in_flight
    }

    /// Whether another request can be submitted.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Points the ring at a new backing file (a drive swap); no request may be in
    /// flight.
    pub fn replace_file(&mut self, disk: &Disk) -> std::io::Result<()> {
        self.ring
            .submitter()
            .register_files_update(0, &[disk.file().as_raw_fd()])
            .map(|_| ())
    }

    /// Queues `io` (taken from `ring`); the kernel sees it at the next
    /// [`Uring::submit`]. Needs [`Uring::has_room`].
    pub fn push(&mut self, io: PreparedIo, ring: &Arc<Ring>) -> Result<(), PreparedIo> {
        let Some(slot) = self.free.pop() else {
            return Err(io);
        };
        let entry = entry(&io, slot);
        // SAFETY: the iovecs and the memory they point into stay alive in the slot
        // until the request completes (`complete`), or the ring is torn down (`Drop`
        // waits for every request first).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.free.push(slot);
            return Err(io);
        }
        self.slots[slot] = Some(InFlight {
            op: io.op,
            head: io.head,
            status: io.status,
            bytes: io.bytes,
            offset: io.offset,
            _iovecs: io.iovecs,
            ring: ring.clone(),
        });
        self.in_flight += 1;
        Ok(())
    }

    /// Hands the queued requests to the kernel.
    pub fn submit(&mut self) -> std::io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    /// Returns every completed request to its driver; `id` names the drive in logs.
    /// The driver is interrupted once per batch (per queue, should a batch span a
    /// reset's old and new queue).
    pub fn complete(&mut self, id: &str, counts: &counters::Block) {
        let mut owed: Option<Arc<Ring>> = None;
        for c in self.ring.completion() {
            let slot = c.user_data();
            let Some(r) = usize::try_from(slot)
                .ok()
                .and_then(|s| self.slots.get_mut(s))
                .and_then(Option::take)
            else {
                tracing::error!("virtio-blk drive {id}: a completion for no request ({slot})");
                continue;
            };
            self.free.push(slot as usize);
            self.in_flight -= 1;
            let ok = finish(&r, c.result(), id, counts);
            let status = if ok {
                request::VIRTIO_BLK_S_OK
            } else {
                request::VIRTIO_BLK_S_IOERR
            };
            let written = if r.op == Op::Read && ok { r.bytes } else { 0 };
            // A status byte the device cannot write still returns the request (as
            // `request::execute` does), with nothing written.
            let len = match r.ring.mem.write_obj(status, r.status) {
                Ok(()) => written as u32 + 1,
                Err(_) => 0,
            };
            r.ring.add_used(r.head, len);
            match &owed {
                Some(ring) if Arc::ptr_eq(ring, &r.ring) => {}
                _ => {
                    if let Some(previous) = owed.replace(r.ring) {
                        previous.notify();
                    }
                }
            }
        }
        if let Some(ring) = owed {
            ring.notify();
        }
    }

    /// Waits until every submitted request has completed and returned to its driver.
    pub fn wait_idle(&mut self, id: &str, counts: &counters::Block) {
        while self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("virtio-blk drive {id}: waiting for requests: {e}");
                    // Nothing more can be learnt of them; without a completion the
                    // slots keep the guest memory they point into.
                    return;
                }
            }
            self.complete(id, counts);
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still write into guest memory the slots keep mapped.
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Leak the slots: their memory must outlive the requests.
                    std::mem::forget(std::mem::take(&mut self.slots));
                    return;
                }
            }
            for c in self.ring.completion() {
                if let Some(s) = self.slots.get_mut(c.user_data() as usize) {
                    if s.take().is_some() {
                        self.in_flight -= 1;
                    }
                }
            }
        }
    }
}

/// The submission of `io` in slot `slot`: on the drive's fixed file; a flush drained
/// (it starts once every entry before it has completed, and holds back those after).
fn entry(io: &PreparedIo, slot: usize) -> squeue::Entry {
    let iovecs = (io.iovecs.as_ptr(), io.iovecs.len() as u32);
    let drain = squeue::Flags::IO_DRAIN;
    match io.op {
        Op::Read => opcode::Readv::new(DISK, iovecs.0, iovecs.1)
            .offset(io.offset)
            .build(),
        Op::Write => opcode::Writev::new(DISK, iovecs.0, iovecs.1)
            .offset(io.offset)
            .build(),
        Op::Flush => opcode::Fsync::new(DISK)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .flags(drain),
    }
    .flags(squeue::Flags::FIXED_FILE)
    .user_data(slot as u64)
}

/// Whether request `r` completed with result `res` as it should; logs why not.
fn finish(r: &InFlight, res: i32, id: &str, counts: &counters::Block) -> bool {
    let what = match r.op {
        Op::Read => "read",
        Op::Write => "write",
        Op::Flush => "flush",
    };
    if res < 0 {
        let e = std::io::Error::from_raw_os_error(-res);
        request::host_io_error(id, what, r.offset, &e);
        return false;
    }
    if r.op != Op::Flush && res as usize != r.bytes {
        let e = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{res} of {} bytes", r.bytes),
        );
        request::host_io_error(id, what, r.offset, &e);
        return false;
    }
    match r.op {
        Op::Read => {
            counts.read_ops.inc();
            counts.read_bytes.add(r.bytes as u64);
        }
        Op::Write => {
            counts.write_ops.inc();
            counts.write_bytes.add(r.bytes as u64);
        }
        Op::Flush => counts.flush_ops.inc(),
    }
    true
}

/// Takes the request in `chain` apart for the ring, or says it runs synchronously
/// (another layout, another request type, or one that fails its checks there).
pub fn prepare(
    chain: &DescriptorChain<Arc<GuestMemoryMmap>>,
    mem: &GuestMemoryMmap,
    disk: &Disk,
) -> Prepared {
    let descs: Vec<_> = chain.clone().collect();
    let (Some(first), Some(last)) = (descs.first(), descs.last()) else {
        return Prepared::Execute;
    };
    if descs.len() < 2
        || first.is_write_only()
        || first.len() != 16
        || !last.is_write_only()
        || last.len() != 1
    {
        return Prepared::Execute;
    }
    let Ok(header) = mem.read_obj::<[u8; 16]>(first.addr()) else {
        return Prepared::Execute;
    };
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..]);
    let sector = u64::from_le_bytes(sector);
    let data = &descs[1..descs.len() - 1];
    let op = match kind {
        request::VIRTIO_BLK_T_IN => Op::Read,
        request::VIRTIO_BLK_T_OUT if !disk.read_only() => Op::Write,
        request::VIRTIO_BLK_T_FLUSH if data.is_empty() => Op::Flush,
        _ => return Prepared::Execute,
    };
    let mut iovecs = Vec::new();
    let mut bytes = 0usize;
    if op != Op::Flush {
        for d in data {
            if d.is_write_only() != (op == Op::Read) {
                return Prepared::Execute;
            }
            for s in GuestMemoryBackend::get_slices(mem, d.addr(), d.len() as usize) {
                let Ok(s) = s else {
                    return Prepared::Execute;
                };
                iovecs.push(libc::iovec {
                    iov_base: s.ptr_guard_mut().as_ptr().cast(),
                    iov_len: s.len(),
                });
            }
            bytes += d.len() as usize;
        }
        if bytes == 0 || !request::check_range(disk, sector, bytes) {
            return Prepared::Execute;
        }
    }
    Prepared::Submit(PreparedIo {
        op,
        head: chain.head_index(),
        status: last.addr(),
        bytes,
        offset: sector.wrapping_mul(SECTOR_SIZE),
        iovecs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Submits `entry` on `u`'s ring and returns its result.
    fn run(u: &mut Uring, entry: squeue::Entry) -> i32 {
        // SAFETY: the entries below point at no memory, or at a live local buffer.
        unsafe { u.ring.submission().push(&entry.user_data(7)).unwrap() };
        u.ring.submit_and_wait(1).unwrap();
        let c = u.ring.completion().next().unwrap();
        c.result()
    }

    #[test]
    fn the_ring_runs_only_reads_writes_and_flushes_of_the_drives_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let disk = Disk::open(f.path(), false).unwrap();
        let done = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut u = Uring::new(&disk, 8, &done).unwrap();
        let mut buf = [0u8; 512];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let read = |fd| opcode::Readv::new(fd, iov.as_ptr(), 1).build();
        assert_eq!(
            run(&mut u, read(DISK).flags(squeue::Flags::FIXED_FILE)),
            512
        );
        let eacces = -libc::EACCES;
        // Another descriptor than the drive's registered file.
        let other = types::Fd(done.as_raw_fd());
        assert_eq!(
            run(&mut u, read_fd(other, &iov)),
            eacces,
            "a plain descriptor"
        );
        // Any other operation.
        let nop = opcode::Nop::new().build().flags(squeue::Flags::FIXED_FILE);
        assert_eq!(run(&mut u, nop), eacces, "a no-op");
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c"/".as_ptr()).build();
        assert_eq!(run(&mut u, open.flags(squeue::Flags::FIXED_FILE)), eacces);
        // No registration but the file update.
        // SAFETY: the buffer outlives the ring's use of it (refused anyway).
        let e = unsafe { u.ring.submitter().register_buffers(&iov) };
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EACCES));
        u.replace_file(&disk).unwrap();
    }

    #[test]
    fn a_flush_is_drained_and_every_entry_is_on_the_fixed_file() {
        // The kernel runs a drained entry only once every earlier one completed, so
        // a flush covers the writes the driver saw complete before it. (Writes to a
        // page cache complete inline, in order, so no timing test could tell.)
        let io = |op| PreparedIo {
            op,
            head: 0,
            status: GuestAddress(0),
            bytes: 0,
            offset: 0,
            iovecs: Vec::new(),
        };
        let flags = |op| {
            let e = format!("{:?}", entry(&io(op), 3));
            let after = e.split("flags: ").nth(1).unwrap();
            after.split(',').next().unwrap().parse::<u8>().unwrap()
        };
        let (fixed, drain) = (
            squeue::Flags::FIXED_FILE.bits(),
            squeue::Flags::IO_DRAIN.bits(),
        );
        assert_eq!(flags(Op::Flush), fixed | drain);
        assert_eq!(flags(Op::Read), fixed);
        assert_eq!(flags(Op::Write), fixed);
    }

    fn read_fd(fd: types::Fd, iov: &[libc::iovec; 1]) -> squeue::Entry {
        opcode::Readv::new(fd, iov.as_ptr(), 1).build()
    }
}
