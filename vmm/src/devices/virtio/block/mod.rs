//! virtio-blk backed by a host file: read-only or read-write, flush, discard and
//! write-zeroes, and a backing file that can be swapped while the guest runs (the
//! guest is told through a configuration-change interrupt and re-reads the
//! capacity). Requests run off the event loop, up to a queue's worth at once, on
//! one of two engines ([`IoEngine`]): the drive's worker threads (`worker`), or
//! io_uring (`uring`).

mod disk;
mod request;
mod ring;
mod uring;
mod worker;

pub use disk::{Disk, DiskError};
pub use uring::REGISTER_FILES_UPDATE;

use ring::Ring;

use super::{
    device_error, device_type, ActivateError, IrqTrigger, RateLimit, VirtioDevice, INT_CONFIG,
    VIRTIO_F_VERSION_1,
};
use crate::counters;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::path::Path;
use std::sync::{Arc, Mutex};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// `virtio_blk_config` up to `write_zeroes_may_unmap` and its padding.
const CONFIG_LEN: usize = 60;
/// Discards are aligned to 4 KiB (in sectors): smaller pieces free no file block.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Largest data segment (`size_max`): data goes through the bounce buffer in pieces
/// whatever the size, so this only needs to exceed what a guest merges.
const SIZE_MAX: u32 = 1 << 20;
/// Worker threads per drive: requests in flight at once.
const WORKERS: usize = 2;
/// Requests taken from the ring and not yet returned: a driver that republishes
/// chains without waiting for them cannot queue more than a ring's worth.
const MAX_IN_FLIGHT: usize = QUEUE_SIZE as usize;
/// Event tokens: the queue's notification, requests finished (room in the engine).
const QUEUE_TOKEN: u32 = 0;
const FREED_TOKEN: u32 = 1;

/// How a drive runs its requests. io_uring is the default: measured against the
/// worker threads in turn (docs/BENCHMARKS.md, 2026-12-07), it moved 1.2-1.6x the
/// sequential MiB/s and 1.2x the random 4 KiB reads, for 0.9x the random writes
/// (a buffered write goes through one of the kernel's io_uring threads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// Worker threads of the drive's own, copying through a bounce buffer.
    Workers,
    /// io_uring, straight into guest memory; the worker threads where the kernel
    /// offers no io_uring.
    #[default]
    Uring,
}

/// The engine a drive runs.
enum Engine {
    Workers(worker::Pool<Request>),
    Uring(Box<uring::Uring>),
}

/// One request for a worker: its chain, where it returns, and the file it was taken
/// for.
struct Request {
    chain: DescriptorChain<Arc<GuestMemoryMmap>>,
    ring: Arc<Ring>,
    disk: Arc<Disk>,
}

/// A virtio block device.
pub struct Block {
    id: String,
    disk: Arc<Disk>,
    queue_evts: Vec<EventFd>,
    config_generation: u32,
    /// Kept across resets so a swap can always signal the driver.
    irq: Option<Arc<IrqTrigger>>,
    active: Option<Arc<Ring>>,
    counts: Arc<counters::Block>,
    engine: Engine,
    /// Signalled when requests finish (as the engine asks).
    finished: Arc<EventFd>,
    /// Runs a request (on a worker, or on the event loop when no worker thread could
    /// start or io_uring cannot take it).
    run: Arc<worker::Run<Request>>,
    /// Its bounce buffer.
    scratch: Vec<u8>,
}

impl Block {
    /// A drive named `id` backed by `disk`, on the default engine.
    pub fn new(id: String, disk: Disk) -> std::io::Result<Self> {
        Self::with_engine(id, disk, IoEngine::default())
    }

    /// A drive named `id` backed by `disk`, running its requests on `engine`.
    pub fn with_engine(id: String, disk: Disk, engine: IoEngine) -> std::io::Result<Self> {
        let counts: Arc<counters::Block> = Arc::default();
        let run: Arc<worker::Run<Request>> = {
            let (id, counts) = (id.clone(), counts.clone());
            Arc::new(move |r: Request, scratch: &mut Vec<u8>| {
                if scratch.is_empty() {
                    *scratch = request::bounce_buffer();
                }
                let head = r.chain.head_index();
                let len = request::execute(r.chain, &r.ring.mem, &r.disk, &id, scratch, &counts);
                r.ring.complete(head, len);
            })
        };
        let finished = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let engine = match engine {
            IoEngine::Uring => match uring::Uring::new(&disk, u32::from(QUEUE_SIZE), &finished) {
                Ok(u) => Engine::Uring(Box::new(u)),
                Err(e) => {
                    tracing::warn!(drive = %id, "{e}; the drive runs on worker threads");
                    Engine::Workers(worker_pool(&id, &run, &finished))
                }
            },
            IoEngine::Workers => Engine::Workers(worker_pool(&id, &run, &finished)),
        };
        Ok(Block {
            engine,
            finished,
            id,
            disk: Arc::new(disk),
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK)?],
            config_generation: 0,
            irq: None,
            active: None,
            counts,
            run,
            scratch: Vec::new(),
        })
    }

    /// The drive's ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the drive counts (notifications, bytes and requests).
    pub fn counters(&self) -> Arc<counters::Block> {
        self.counts.clone()
    }

    /// The backing disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Replaces the backing file. The read-only mode of a drive is fixed at boot
    /// (the driver negotiated it), so the new file is opened the same way. In-flight
    /// requests completed before the swap; later ones see the new file.
    pub fn swap(&mut self, path: &Path) -> Result<(), DiskError> {
        let disk = Disk::open(path, self.disk.read_only())?;
        self.replace(disk, path);
        Ok(())
    }

    /// [`Self::swap`] to a file opened by the client (a jailed VMM cannot open the
    /// host's files); `path` only names it.
    pub fn swap_file(&mut self, file: std::fs::File, path: &Path) -> Result<(), DiskError> {
        let disk = Disk::from_file(file, path, self.disk.read_only())?;
        self.replace(disk, path);
        Ok(())
    }

    fn replace(&mut self, disk: Disk, path: &Path) {
        // Requests taken before the swap finish on the old file.
        self.wait_idle();
        if let Engine::Uring(u) = &mut self.engine {
            if let Err(e) = u.replace_file(&disk) {
                tracing::warn!(drive = %self.id, "{e}; the drive runs on worker threads now");
                self.engine = Engine::Workers(worker_pool(&self.id, &self.run, &self.finished));
            }
        }
        tracing::info!(
            drive = %self.id,
            path = %path.display(),
            sectors = disk.sectors(),
            "swapped drive backing file"
        );
        self.disk = Arc::new(disk);
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(irq) = &self.irq {
            irq.trigger(INT_CONFIG);
        }
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut cfg = [0u8; CONFIG_LEN];
        let mut put = |at: usize, v: u32| cfg[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(8, SIZE_MAX);
        put(12, u32::from(QUEUE_SIZE - 2));
        put(36, request::MAX_SEGMENT_SECTORS); // max_discard_sectors
        put(40, request::MAX_SEGMENTS); // max_discard_seg
        put(44, DISCARD_ALIGNMENT_SECTORS); // discard_sector_alignment
        put(48, request::MAX_SEGMENT_SECTORS); // max_write_zeroes_sectors
        put(52, request::MAX_SEGMENTS); // max_write_zeroes_seg
        cfg[..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        cfg[56] = 1; // write_zeroes_may_unmap
        cfg
    }

    /// Waits until every request taken from the ring has returned to the driver.
    fn wait_idle(&mut self) {
        match &mut self.engine {
            Engine::Workers(pool) => pool.wait_idle(),
            Engine::Uring(u) => u.wait_idle(&self.id, &self.counts),
        }
    }

    /// Hands the requests the driver queued to the engine, up to `MAX_IN_FLIGHT`.
    fn process_queue(&mut self) {
        let Some(ring) = self.active.clone() else {
            return;
        };
        let mut ran_here = false;
        loop {
            let mut took = false;
            while self.has_room() {
                let Some(chain) = ring.lock().pop_descriptor_chain(ring.mem.clone()) else {
                    break;
                };
                took = true;
                ran_here |= self.start(chain, &ring);
            }
            if let Engine::Uring(u) = &mut self.engine {
                if let Err(e) = u.submit() {
                    // The entries stay queued: the next completion or kick submits them.
                    static SUBMIT: RateLimit = RateLimit::new();
                    device_error(
                        &SUBMIT,
                        "virtio-blk",
                        &format_args!("drive {}: submitting to io_uring: {e}", self.id),
                    );
                }
            }
            if !self.has_room() {
                // Taken up again when a request finishes.
                if let Engine::Workers(pool) = &self.engine {
                    pool.wake_on_next();
                }
                break;
            }
            // With EVENT_IDX the driver kicks again only once past the index published
            // here; a chain it queued before seeing it is taken now. A ring that shows
            // chains but yields none (a bad available index) is not read again.
            let more = ring.lock().enable_notification(&*ring.mem).unwrap_or(false);
            if !(more && took) {
                break;
            }
        }
        if ran_here {
            static NO_THREAD: RateLimit = RateLimit::new();
            device_error(
                &NO_THREAD,
                "virtio-blk",
                &format_args!(
                    "drive {}: no worker thread could start; requests run on the event loop",
                    self.id
                ),
            );
        }
    }

    /// The engine the drive runs.
    #[cfg(test)]
    pub(crate) fn engine(&self) -> IoEngine {
        match self.engine {
            Engine::Workers(_) => IoEngine::Workers,
            Engine::Uring(_) => IoEngine::Uring,
        }
    }

    /// Requests taken from the ring and not yet returned.
    #[cfg(test)]
    fn pending(&self) -> usize {
        match &self.engine {
            Engine::Workers(pool) => pool.pending(),
            Engine::Uring(u) => u.pending(),
        }
    }

    fn has_room(&self) -> bool {
        match &self.engine {
            Engine::Workers(pool) => pool.pending() < MAX_IN_FLIGHT,
            Engine::Uring(u) => u.has_room(),
        }
    }

    /// Starts the request in `chain`; true if it ran on the event loop for want of a
    /// worker thread.
    fn start(&mut self, chain: DescriptorChain<Arc<GuestMemoryMmap>>, ring: &Arc<Ring>) -> bool {
        let r = Request {
            chain,
            ring: ring.clone(),
            disk: self.disk.clone(),
        };
        match &mut self.engine {
            Engine::Workers(pool) => match pool.submit(request::is_flush(&r.chain, &ring.mem), r) {
                Ok(()) => false,
                Err(r) => {
                    (self.run)(r, &mut self.scratch);
                    true
                }
            },
            Engine::Uring(u) => {
                let r = match uring::prepare(&r.chain, &ring.mem, &self.disk) {
                    uring::Prepared::Submit(io) => match u.push(io, ring) {
                        Ok(()) => return false,
                        Err(_) => r,
                    },
                    uring::Prepared::Execute => r,
                };
                // Another layout or request type: run here, after what came before
                // it if it is a flush.
                if request::is_flush(&r.chain, &ring.mem) {
                    u.wait_idle(&self.id, &self.counts);
                }
                (self.run)(r, &mut self.scratch);
                false
            }
        }
    }
}

/// The worker threads of drive `id`, running requests with `run`.
fn worker_pool(
    id: &str,
    run: &Arc<worker::Run<Request>>,
    finished: &Arc<EventFd>,
) -> worker::Pool<Request> {
    worker::Pool::new(format!("blk-{id}"), WORKERS, run.clone(), finished.clone())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        let access = if self.disk.read_only() {
            VIRTIO_BLK_F_RO
        } else {
            VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
        };
        VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_FLUSH
            | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            | access
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_space(), offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        let [queue] = super::take_queues(queues)?;
        self.irq = Some(irq.clone());
        self.active = Some(Arc::new(Ring {
            queue: Mutex::new(queue),
            mem: Arc::new(mem),
            irq,
        }));
        Ok(())
    }
    fn reset(&mut self) {
        // The driver forgot its requests: none may write into its memory later.
        self.wait_idle();
        self.active = None;
    }
    fn quiesce(&mut self) {
        self.wait_idle();
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|r| r.lock().state()).collect()
    }
    fn config_generation(&self) -> u32 {
        self.config_generation
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        match events.data() {
            QUEUE_TOKEN => {
                self.counts.notifications.inc();
                let _ = self.queue_evts[0].read();
            }
            _ => {
                let _ = self.finished.read();
                if let Engine::Uring(u) = &mut self.engine {
                    u.complete(&self.id, &self.counts);
                }
            }
        }
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let events = [
            Events::with_data(&self.queue_evts[0], QUEUE_TOKEN, EventSet::IN),
            Events::with_data(&*self.finished, FREED_TOKEN, EventSet::IN),
        ];
        for e in events {
            if let Err(e) = ops.add(e) {
                tracing::error!("registering a virtio-blk event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::INT_VRING;
    use std::io::Write;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn swap_changes_capacity_and_signals() {
        let mut a = tempfile::NamedTempFile::new().unwrap();
        a.write_all(&[0u8; 4096]).unwrap();
        let mut b = tempfile::NamedTempFile::new().unwrap();
        b.write_all(&[0u8; 8192]).unwrap();
        let mut blk = Block::new("d".into(), Disk::open(a.path(), false).unwrap()).unwrap();
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        blk.irq = Some(irq.clone());
        blk.swap(b.path()).unwrap();
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16);
        assert_eq!(blk.config_generation(), 1);
        assert_eq!(irq.status() & INT_CONFIG, INT_CONFIG);
        // A missing file leaves the old one in place.
        let e = blk.swap(Path::new("/nonexistent/disk.img")).unwrap_err();
        assert!(
            matches!(&e, DiskError::Open(p, io)
                if p == Path::new("/nonexistent/disk.img")
                    && io.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert_eq!(blk.disk().sectors(), 16);
    }

    /// A request chain of descriptors `at..`: (address, length, device-writable).
    fn chain(at: u16, parts: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
                if i < last {
                    flags |= VRING_DESC_F_NEXT;
                }
                let next = at + i as u16 + 1;
                RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
            })
            .collect()
    }

    /// Writes a request header (type, sector) at `addr`.
    fn header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(addr)).unwrap();
    }

    #[test]
    fn requests_finish_off_the_event_loop_and_a_snapshot_waits_for_them() {
        finish_off_the_event_loop(IoEngine::Workers);
    }

    #[test]
    fn requests_finish_through_io_uring_and_a_snapshot_waits_for_them() {
        finish_off_the_event_loop(IoEngine::Uring);
    }

    fn finish_off_the_event_loop(engine: IoEngine) {
        const OUT: u32 = 1;
        const FLUSH: u32 = 4;
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * 1024).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let used_idx = || -> u16 { mem.read_obj(q.used_addr().unchecked_add(2)).unwrap() };
        let status = |addr: u64| -> u8 { mem.read_obj(GuestAddress(addr)).unwrap() };
        // A 4 KiB write at sector 8, then a flush.
        header(&mem, 0x10_0000, OUT, 8);
        mem.write_slice(&[0xab; 4096], GuestAddress(0x20_0000))
            .unwrap();
        header(&mem, 0x10_0100, FLUSH, 0);
        let mut descs = chain(
            0,
            &[
                (0x10_0000, 16, false),
                (0x20_0000, 4096, false),
                (0x30_0000, 1, true),
            ],
        );
        descs.extend(chain(3, &[(0x10_0100, 16, false), (0x30_0010, 1, true)]));
        q.add_desc_chains(&descs, 0).unwrap();
        let blk = Block::with_engine("d".into(), Disk::open(f.path(), false).unwrap(), engine);
        let blk = blk.unwrap();
        assert_eq!(blk.engine(), engine, "the engine asked for");
        let blk = Arc::new(std::sync::Mutex::new(blk));
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let queue = q.create_queue::<Queue>().unwrap();
        blk.lock()
            .unwrap()
            .activate(mem.clone(), vec![queue], irq.clone())
            .unwrap();
        use event_manager::SubscriberOps;
        let mut em = event_manager::EventManager::<Arc<std::sync::Mutex<Block>>>::new().unwrap();
        em.add_subscriber(blk.clone());
        blk.lock().unwrap().queue_evts[0].write(1).unwrap();
        // The event loop hands them to the workers, which return them to the driver.
        let start = std::time::Instant::now();
        while used_idx() < 2 {
            assert!(
                start.elapsed().as_secs() < 10,
                "the requests never finished"
            );
            em.run_with_timeout(100).unwrap();
        }
        assert_eq!((status(0x30_0000), status(0x30_0010)), (0, 0));
        assert_eq!(irq.status() & INT_VRING, INT_VRING);
        let on_disk = std::fs::read(f.path()).unwrap();
        assert!(on_disk[4096..8192].iter().all(|b| *b == 0xab));

        // Two more, taken from the ring: a snapshot's quiesce returns once they are
        // back with the driver.
        header(&mem, 0x10_0200, FLUSH, 0);
        header(&mem, 0x10_0300, FLUSH, 0);
        let mut more = chain(5, &[(0x10_0200, 16, false), (0x30_0020, 1, true)]);
        more.extend(chain(7, &[(0x10_0300, 16, false), (0x30_0030, 1, true)]));
        q.add_desc_chains(&more, 5).unwrap();
        let mut dev = blk.lock().unwrap();
        let _ = dev.queue_evts[0].read();
        dev.process_queue();
        dev.quiesce();
        assert_eq!(used_idx(), 4);
        assert_eq!(dev.pending(), 0);
    }

    /// Runs the chains queued in `q` on `blk` until `n` are back with the driver.
    fn serve(blk: Block, mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, n: u16) {
        use event_manager::SubscriberOps;
        let blk = Arc::new(std::sync::Mutex::new(blk));
        let queue = q.create_queue::<Queue>().unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        blk.lock()
            .unwrap()
            .activate(mem.clone(), vec![queue], irq)
            .unwrap();
        let mut em = event_manager::EventManager::<Arc<std::sync::Mutex<Block>>>::new().unwrap();
        em.add_subscriber(blk.clone());
        blk.lock().unwrap().queue_evts[0].write(1).unwrap();
        let used = q.used_addr().unchecked_add(2);
        let start = std::time::Instant::now();
        while mem.read_obj::<u16>(used).unwrap() < n {
            assert!(
                start.elapsed().as_secs() < 10,
                "the requests never finished"
            );
            em.run_with_timeout(100).unwrap();
        }
    }

    #[test]
    fn io_uring_serves_every_layout_and_checks_every_request() {
        const IN: u32 = 0;
        const OUT: u32 = 1;
        const FLUSH: u32 = 4;
        const GET_ID: u32 = 8;
        let f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.path(), &content).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let q = MockSplitQueue::new(&mem, 32);
        let status = |i: u64| -> u8 { mem.read_obj(GuestAddress(0x30_0000 + i * 16)).unwrap() };
        mem.write_slice(&[0xff; 16 * 8], GuestAddress(0x30_0000))
            .unwrap();
        let mut descs = Vec::new();
        // 0: a read of sectors 2..10 into two buffers.
        header(&mem, 0x10_0000, IN, 2);
        descs.extend(chain(
            0,
            &[
                (0x10_0000, 16, false),
                (0x20_0000, 1024, true),
                (0x20_1000, 3072, true),
                (0x30_0000, 1, true),
            ],
        ));
        // 1: a write of sector 100 with header and data in one descriptor (another
        // layout: run synchronously).
        header(&mem, 0x10_0100, OUT, 100);
        mem.write_slice(&[0xcd; 512], GuestAddress(0x10_0110))
            .unwrap();
        descs.extend(chain(
            4,
            &[(0x10_0100, 16 + 512, false), (0x30_0010, 1, true)],
        ));
        // 2: a write of sector 8, canonical.
        header(&mem, 0x10_0400, OUT, 8);
        mem.write_slice(&[0xab; 512], GuestAddress(0x20_2000))
            .unwrap();
        descs.extend(chain(
            6,
            &[
                (0x10_0400, 16, false),
                (0x20_2000, 512, false),
                (0x30_0020, 1, true),
            ],
        ));
        // 3: a read past the end: an error.
        header(&mem, 0x10_0500, IN, 128);
        descs.extend(chain(
            9,
            &[
                (0x10_0500, 16, false),
                (0x20_3000, 512, true),
                (0x30_0030, 1, true),
            ],
        ));
        // 4: a read whose data buffer the device may not write: nothing is read into
        // it (synchronously, as any layout io_uring does not take).
        header(&mem, 0x10_0600, IN, 0);
        descs.extend(chain(
            12,
            &[
                (0x10_0600, 16, false),
                (0x20_4000, 512, false),
                (0x30_0040, 1, true),
            ],
        ));
        // 5: the serial number (synchronous).
        header(&mem, 0x10_0700, GET_ID, 0);
        descs.extend(chain(
            15,
            &[
                (0x10_0700, 16, false),
                (0x20_5000, 20, true),
                (0x30_0050, 1, true),
            ],
        ));
        // 6: a flush.
        header(&mem, 0x10_0800, FLUSH, 0);
        descs.extend(chain(18, &[(0x10_0800, 16, false), (0x30_0060, 1, true)]));
        q.add_desc_chains(&descs, 0).unwrap();
        let disk = Disk::open(f.path(), false).unwrap();
        let blk = Block::with_engine("serial-1".into(), disk, IoEngine::Uring).unwrap();
        assert_eq!(blk.engine(), IoEngine::Uring);
        let counts = blk.counters();
        serve(blk, &mem, &q, 7);
        let got: Vec<u8> = (0..7).map(status).collect();
        assert_eq!(got, [0, 0, 0, 1, 0, 0, 0], "statuses");
        let mut untouched = [1u8; 512];
        mem.read_slice(&mut untouched, GuestAddress(0x20_4000))
            .unwrap();
        assert_eq!(untouched, [0; 512], "a device-readable buffer was written");
        let mut read = vec![0u8; 4096];
        mem.read_slice(&mut read[..1024], GuestAddress(0x20_0000))
            .unwrap();
        mem.read_slice(&mut read[1024..], GuestAddress(0x20_1000))
            .unwrap();
        assert_eq!(read, content[1024..5120], "the read's data");
        let mut serial = [0u8; 8];
        mem.read_slice(&mut serial, GuestAddress(0x20_5000))
            .unwrap();
        assert_eq!(&serial, b"serial-1");
        let on_disk = std::fs::read(f.path()).unwrap();
        assert!(on_disk[4096..4608].iter().all(|b| *b == 0xab));
        assert!(on_disk[51200..51712].iter().all(|b| *b == 0xcd));
        // The used lengths (in the order requests finished): data and status of the
        // read, the status of a write.
        let used_len = |head: u32| -> u32 {
            (0..7u64)
                .map(|i| q.used_addr().unchecked_add(4 + i * 8))
                .find(|at| mem.read_obj::<u32>(*at).unwrap() == head)
                .map(|at| mem.read_obj(at.unchecked_add(4)).unwrap())
                .unwrap()
        };
        assert_eq!(used_len(0), 4097);
        assert_eq!(used_len(6), 1);
        assert_eq!(counts.read_bytes.get(), 4096);
        assert_eq!(counts.write_bytes.get(), 1024);
        assert_eq!(counts.flush_ops.get(), 1);
    }

    #[test]
    fn read_only_is_advertised() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let blk = Block::new("d".into(), Disk::open(f.path(), true).unwrap()).unwrap();
        assert_ne!(blk.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert_eq!(
            blk.avail_features() & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
            0
        );
        let rw = Block::new("d".into(), Disk::open(f.path(), false).unwrap()).unwrap();
        assert_ne!(rw.avail_features() & VIRTIO_BLK_F_DISCARD, 0);
        let mut cfg = [0u8; 4];
        rw.read_config(40, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg), request::MAX_SEGMENTS);
        assert_ne!(rw.avail_features() & VIRTIO_BLK_F_SIZE_MAX, 0);
        rw.read_config(8, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg), SIZE_MAX);
    }
}
