//! virtio-blk backed by a host file: read-only or read-write, flush, and a
//! backing file that can be swapped while the guest runs (the guest is told
//! through a configuration-change interrupt and re-reads the capacity).

mod disk;
mod request;

pub use disk::{Disk, DiskError};

use super::{
    device_type, drain_queue, ActivateError, IrqTrigger, VirtioDevice, INT_CONFIG, INT_VRING,
    VIRTIO_F_VERSION_1,
};
use crate::counters;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::path::Path;
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// `virtio_blk_config` up to `write_zeroes_may_unmap` and its padding.
const CONFIG_LEN: usize = 60;
/// Discards are aligned to 4 KiB (in sectors): smaller pieces free no file block.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

/// A virtio block device.
pub struct Block {
    id: String,
    disk: Disk,
    queue_evts: Vec<EventFd>,
    config_generation: u32,
    /// Kept across resets so a swap can always signal the driver.
    irq: Option<Arc<IrqTrigger>>,
    /// Data is copied through this between guest memory and the file.
    bounce: Vec<u8>,
    active: Option<Active>,
    counts: Arc<counters::Block>,
}

impl Block {
    /// A drive named `id` backed by `disk`.
    pub fn new(id: String, disk: Disk) -> std::io::Result<Self> {
        Ok(Block {
            id,
            disk,
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK)?],
            config_generation: 0,
            irq: None,
            bounce: request::bounce_buffer(),
            active: None,
            counts: Arc::default(),
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
        tracing::info!(
            drive = %self.id,
            path = %path.display(),
            sectors = disk.sectors(),
            "swapped drive backing file"
        );
        self.disk = disk;
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(irq) = &self.irq {
            irq.trigger(INT_CONFIG);
        }
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut cfg = [0u8; CONFIG_LEN];
        let mut put = |at: usize, v: u32| cfg[at..at + 4].copy_from_slice(&v.to_le_bytes());
        // size_max (offset 8) left 0: unused without VIRTIO_BLK_F_SIZE_MAX.
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

    fn process_queue(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let disk = &mut self.disk;
        let id = &self.id;
        let bounce = &mut self.bounce;
        let counts = &self.counts;
        if drain_queue("virtio-blk", &mut a.queue, &a.mem, |chain, mem| {
            request::execute(chain, mem, disk, id, bounce, counts)
        }) {
            a.irq.trigger(INT_VRING);
        }
    }
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
        self.active = Some(Active { mem, queue, irq });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }
    fn config_generation(&self) -> u32 {
        self.config_generation
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            self.counts.notifications.inc();
            let _ = self.queue_evts[0].read();
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            tracing::error!("registering virtio-blk queue event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
    }
}
