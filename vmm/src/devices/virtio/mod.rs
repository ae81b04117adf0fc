//! virtio devices over the virtio-mmio transport (virtio 1.x, split queues).
//!
//! A device implements [`VirtioDevice`] (what the transport needs) and
//! `MutEventSubscriber` (queue notifications and backend I/O on the VMM's event
//! loop). Queue notifications arrive on per-queue `EventFd`s that KVM signals
//! directly (ioeventfd), so a guest kick never exits to user space on the vCPU.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_F_VERSION_1`: we only speak the modern interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type IDs (virtio spec 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;
    /// File system device.
    pub const FS: u32 = 26;

    /// The device's name in logs: `virtio-blk`, ...
    pub fn name(device_type: u32) -> &'static str {
        match device_type {
            NET => "virtio-net",
            BLOCK => "virtio-blk",
            RNG => "virtio-rng",
            BALLOON => "virtio-balloon",
            VSOCK => "virtio-vsock",
            FS => "virtio-fs",
            _ => "virtio device",
        }
    }
}

/// At most one log line per [`RateLimit::INTERVAL_MS`] from one place that can fail
/// over and over (a device error the guest can provoke on every request): the first
/// error is logged at once, later ones are counted and the next line says how many
/// were left out. Usable as a `static`.
pub struct RateLimit {
    /// Monotonic ms of the last line logged, plus one (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// Shortest time between two lines.
    pub const INTERVAL_MS: u64 = 10_000;

    /// A limit that has logged nothing yet.
    pub const fn new() -> Self {
        RateLimit {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were left out since the
    /// last one); `None` when this one is left out.
    pub fn check(&self) -> Option<u64> {
        self.check_at(monotonic_ms())
    }

    fn check_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last - 1) >= Self::INTERVAL_MS;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Logs a runtime error of `device` at error level, one line, at most as often as
/// `limit` allows (the line then says how many like it were left out).
pub fn device_error(limit: &RateLimit, device: &str, error: &dyn std::fmt::Display) {
    match limit.check() {
        Some(0) => tracing::error!("{device}: {error}"),
        Some(n) => tracing::error!("{device}: {error} ({n} more like it not logged)"),
        None => {}
    }
}

/// Logs a warning the guest can provoke over and over (a bad register write, a
/// bad buffer, too many connections) at warn level, at most as often as `limit`
/// allows: a guest must not be able to fill the VMM's log.
pub fn guest_warning(limit: &RateLimit, what: &dyn std::fmt::Display) {
    match limit.check() {
        Some(0) => tracing::warn!("{what}"),
        Some(n) => tracing::warn!("{what} ({n} more like it not logged)"),
        None => {}
    }
}

/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration space changed.
pub const INT_CONFIG: u32 = 0x2;

/// A device's interrupt: the mmio `InterruptStatus` register plus the irqfd.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// A new interrupt with a fresh irqfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqTrigger {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd to register with KVM as this device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Sets `bits` in the interrupt status and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("raising virtio interrupt: {e}");
        }
    }

    /// Raises the line again if any status bit is pending.
    pub fn raise_pending(&self) {
        if self.status() != 0 {
            self.trigger(0);
        }
    }

    /// Current interrupt status.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Why a device refused activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// The backend could not be started.
    #[error("device backend: {0}")]
    Backend(String),
}

/// Takes exactly `N` queues from those the transport activated.
pub fn take_queues<const N: usize>(queues: Vec<Queue>) -> Result<[Queue; N], ActivateError> {
    let got = queues.len();
    <[Queue; N]>::try_from(queues).map_err(|_| ActivateError::QueueCount { expected: N, got })
}

/// What the virtio-mmio transport needs from a device.
pub trait VirtioDevice: Send {
    /// virtio device type ID.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// Feature bits the driver accepted (a subset of `avail_features`). Only
    /// devices whose behaviour depends on them need to keep them.
    fn set_acked_features(&mut self, _features: u64) {}
    /// Reads from the device configuration space; out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// One notification eventfd per queue, signalled by KVM on a guest kick.
    fn queue_events(&self) -> &[EventFd];
    /// Starts the device once the driver sets DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError>;
    /// Returns the device to its pre-activation state (driver reset).
    fn reset(&mut self);
    /// Bumped whenever the configuration space changes under the driver.
    fn config_generation(&self) -> u32 {
        0
    }
    /// The queues an activated device holds, as they stand (for a snapshot, taken
    /// with the vCPUs paused on the thread that runs the device); empty before
    /// activation. Every queue the device was given, in order.
    fn queue_states(&self) -> Vec<QueueState>;
    /// Device state beyond its queues that a snapshot keeps.
    fn save_extra(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Takes back what [`VirtioDevice::save_extra`] saved, before activation.
    fn restore_extra(&mut self, _state: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    /// Finishes what the device runs off the event loop and returns it to the
    /// driver, so that a snapshot's queues owe the driver nothing (vCPUs paused, on
    /// the event loop's thread).
    fn quiesce(&mut self) {}
    /// Called once a restored device is active again: tell the driver what
    /// changed across the snapshot (vsock: its connections are gone).
    fn restored(&mut self) {}
}

/// Copies the part of `config` at `offset` into `data`, zero-filling the rest.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - offset);
    data[..n].copy_from_slice(&config[offset..offset + n]);
}

/// A descriptor chain popped from a queue, borrowing guest memory.
pub type Chain<'a> = virtio_queue::DescriptorChain<&'a GuestMemoryMmap>;

/// Drains `queue` of `device` (its name, for the log), handing each chain to
/// `handle` (which returns the number of bytes it wrote into the chain) and
/// returning the chain as used. Returns true if the driver wants an interrupt. A
/// malformed ring stops the drain (logged as an error of the device); it never
/// loops or panics, since virtio-queue bounds every chain by the queue size.
pub fn drain_queue(
    device: &str,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: impl FnMut(Chain<'_>, &GuestMemoryMmap) -> u32,
) -> bool {
    use virtio_queue::QueueT;
    static USED_RING: RateLimit = RateLimit::new();
    let mut used_any = false;
    'drain: loop {
        let mut took = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            took = true;
            let head = chain.head_index();
            let len = handle(chain, mem);
            if let Err(e) = queue.add_used(mem, head, len) {
                let e = format!("returning used descriptor {head}: {e}; the queue stops");
                device_error(&USED_RING, device, &e);
                break 'drain;
            }
            used_any = true;
        }
        // With EVENT_IDX the driver kicks again only once past the index published
        // here; a chain it queued before seeing it is taken now. A ring that shows
        // chains but yields none (a bad available index) is not read again: that
        // would spin.
        let more = queue.enable_notification(mem).unwrap_or(false);
        if !(more && took) {
            break;
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

/// Asks the driver to kick once it posts another buffer on `queue`, and returns
/// whether one came in meanwhile. With `EVENT_IDX`, `enable_notification` asks for a
/// kick at the device's own position, which can stand behind buffers the driver
/// posted long ago (a frame that found too few gave them back; the event buffer
/// that stays with the driver until a restore): the driver has passed that index
/// and would never kick. So the request is made at the ring's available index, and
/// the position put back.
pub fn kick_at_next_buffer(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    use virtio_queue::QueueT;
    let at = queue.next_avail();
    let Ok(avail) = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) else {
        return false;
    };
    queue.set_next_avail(avail.0);
    let more = queue.enable_notification(mem).unwrap_or(false);
    queue.set_next_avail(at);
    more
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_that_yields_no_chain_is_not_read_forever() {
        use virtio_queue::QueueT;
        use vm_memory::{Address, Bytes, GuestAddress};
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let q = virtio_queue::mock::MockSplitQueue::new(&mem, 16);
            let mut queue: Queue = q.create_queue().unwrap();
            queue.set_event_idx(true);
            // An available index further ahead than the queue is long.
            mem.write_obj(100u16, q.avail_addr().unchecked_add(2))
                .unwrap();
            let mut calls = 0;
            drain_queue("test", &mut queue, &mem, |_, _| {
                calls += 1;
                0
            });
            done.send(calls).unwrap();
        });
        let calls = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("drain_queue spun on a bad ring");
        assert_eq!(calls, 0);
    }

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 10, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn repeated_errors_are_logged_once_per_interval_with_a_count() {
        let limit = RateLimit::new();
        assert_eq!(limit.check_at(5), Some(0), "the first is logged");
        assert_eq!(limit.check_at(6), None);
        assert_eq!(limit.check_at(5 + RateLimit::INTERVAL_MS - 1), None);
        assert_eq!(limit.check_at(5 + RateLimit::INTERVAL_MS), Some(2));
        assert_eq!(limit.check_at(5 + RateLimit::INTERVAL_MS + 1), None);
        assert_eq!(device_type::name(device_type::BLOCK), "virtio-blk");
    }

    #[test]
    fn irq_status_set_and_ack() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger(INT_VRING);
        irq.trigger(INT_CONFIG);
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
    }
}
