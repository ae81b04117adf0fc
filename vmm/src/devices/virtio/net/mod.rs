//! virtio-net on a tap device, implemented in the VMM (this host has no
//! vhost-net). No offloads are negotiated, so every frame is a plain Ethernet
//! frame behind a 12-byte `virtio_net_hdr_v1` that the tap understands as is.

mod tap;

pub use tap::{Tap, TapError, VNET_HDR_LEN};

use super::{device_type, drain_queue, ActivateError, Chain, IrqTrigger, VirtioDevice, INT_VRING};
use crate::counters;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Largest frame plus header we move (64 KiB frame, as tap allows).
pub const MAX_FRAME: usize = 65562;
const TAP_EVENT: u32 = 2;

struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 2],
    irq: Arc<IrqTrigger>,
}

/// A virtio network card.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    /// Length of a frame left in `rx_buf` while the guest had no receive buffer.
    pending_rx: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    counts: Arc<counters::Net>,
}

/// Errors creating a network card.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap device cannot be used.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A queue eventfd cannot be created.
    #[error("creating a queue eventfd: {0}")]
    EventFd(std::io::Error),
}

fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: `mac` is valid writable memory of the given length.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        mac = [0, 0, 0, 0, 0, std::process::id() as u8];
    }
    mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
    mac
}

impl Net {
    /// A card on tap `tap_name` with `mac` (random if `None`).
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let tap = Tap::open(tap_name)?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Net {
            tap,
            mac: mac.unwrap_or_else(random_mac),
            queue_evts: vec![evt()?, evt()?],
            active: None,
            pending_rx: None,
            rx_buf: vec![0u8; MAX_FRAME],
            tx_buf: vec![0u8; MAX_FRAME],
            counts: Arc::default(),
        })
    }

    /// What the card counts (notifications, frames and bytes each way).
    pub fn counters(&self) -> Arc<counters::Net> {
        self.counts.clone()
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Moves frames from the tap into guest receive buffers until either runs out.
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        loop {
            let len = match self.pending_rx.take() {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("reading tap {}: {e}", self.tap.name());
                        break;
                    }
                },
            };
            let rxq = &mut a.queues[RX];
            let Some(chain) = rxq.pop_descriptor_chain(&a.mem) else {
                // No buffer: keep the frame until the guest posts one (rx kick).
                self.pending_rx = Some(len);
                break;
            };
            let head = chain.head_index();
            let written = write_rx_frame(chain, &a.mem, &self.rx_buf[..len]);
            if rxq.add_used(&a.mem, head, written).is_err() {
                break;
            }
            if written > 0 {
                self.counts.rx_packets.inc();
                self.counts.rx_bytes.add((len - VNET_HDR_LEN) as u64);
            }
            used = true;
        }
        if used && a.queues[RX].needs_notification(&a.mem).unwrap_or(true) {
            a.irq.trigger(INT_VRING);
        }
    }

    /// Sends every frame the guest queued for transmission.
    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let tap = &mut self.tap;
        let buf = &mut self.tx_buf;
        let counts = &self.counts;
        let notify = drain_queue("virtio-net", &mut a.queues[TX], &a.mem, |chain, mem| {
            if let Some(len) = read_tx_frame(chain, mem, buf) {
                match tap.write_frame(&buf[..len]) {
                    Ok(_) => {
                        counts.tx_packets.inc();
                        counts.tx_bytes.add((len - VNET_HDR_LEN) as u64);
                    }
                    Err(e) => tracing::debug!("tap write: {e}"),
                }
            }
            0
        });
        if notify {
            a.irq.trigger(INT_VRING);
        }
    }
}

/// Writes `frame` (virtio-net header first) into the guest receive buffer `chain`
/// whole; returns the bytes written, 0 when it does not fit.
pub fn write_rx_frame(chain: Chain<'_>, mem: &GuestMemoryMmap, frame: &[u8]) -> u32 {
    match chain.writer(mem) {
        Ok(mut w) if w.available_bytes() >= frame.len() => match w.write_all(frame) {
            Ok(()) => frame.len() as u32,
            Err(_) => 0,
        },
        _ => {
            tracing::debug!("guest rx buffer too small for a {}-byte frame", frame.len());
            0
        }
    }
}

/// Copies the frame (virtio-net header first) the guest queued in `chain` into
/// `buf`; returns its length, or `None` when the chain cannot be read or its length
/// is outside `VNET_HDR_LEN..=MAX_FRAME` (or `buf` is shorter).
pub fn read_tx_frame(chain: Chain<'_>, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Option<usize> {
    let mut reader = chain.reader(mem).ok()?;
    let len = reader.available_bytes();
    if !(VNET_HDR_LEN..=MAX_FRAME.min(buf.len())).contains(&len) {
        tracing::debug!("dropping a {len}-byte tx frame");
        return None;
    }
    reader.read_exact(&mut buf[..len]).ok()?;
    Some(len)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.mac, offset, data);
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
        let queues = super::take_queues::<2>(queues)?;
        self.active = Some(Active { mem, queues, irq });
        // Frames may have queued on the tap before the driver was ready.
        self.process_rx();
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.pending_rx = None;
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(|q| q.state()))
            .collect()
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            d if d == RX as u32 => {
                self.counts.notifications.inc();
                let _ = self.queue_evts[RX].read();
                self.process_rx();
            }
            d if d == TX as u32 => {
                self.counts.notifications.inc();
                let _ = self.queue_evts[TX].read();
                self.process_tx();
            }
            TAP_EVENT => self.process_rx(),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let regs = [
            Events::with_data(&self.queue_evts[RX], RX as u32, EventSet::IN),
            Events::with_data(&self.queue_evts[TX], TX as u32, EventSet::IN),
            // Edge-triggered: the tap stays readable while the guest has no
            // buffers; we resume on the next rx kick instead of spinning.
            Events::with_data(
                &self.tap,
                TAP_EVENT,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
        ];
        for ev in regs {
            if let Err(e) = ops.add(ev) {
                tracing::error!("registering virtio-net event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const BUF: u64 = 0x10_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn tx_frames_are_read_across_descriptors_within_bounds() {
        let mem = mem();
        let frame: Vec<u8> = (0..72u8).collect();
        mem.write_slice(&frame, GuestAddress(BUF)).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let mut buf = vec![0u8; MAX_FRAME];
        let chain = q
            .build_desc_chain(&[desc(BUF, 12, false), desc(BUF + 12, 60, false)])
            .unwrap();
        assert_eq!(read_tx_frame(chain, &mem, &mut buf), Some(72));
        assert_eq!(&buf[..72], &frame[..]);
        // Shorter than the virtio-net header, longer than a frame, device-writable.
        for d in [
            desc(BUF, VNET_HDR_LEN as u32 - 1, false),
            desc(BUF, MAX_FRAME as u32 + 1, false),
            desc(BUF, 72, true),
        ] {
            let chain = q.build_desc_chain(&[d]).unwrap();
            assert_eq!(read_tx_frame(chain, &mem, &mut buf), None);
        }
    }

    #[test]
    fn rx_frames_go_whole_or_not_at_all() {
        let mem = mem();
        let q = MockSplitQueue::new(&mem, 16);
        let frame = vec![0x5a; 100];
        let chain = q
            .build_desc_chain(&[desc(BUF, 50, true), desc(BUF + 0x1000, 50, true)])
            .unwrap();
        assert_eq!(write_rx_frame(chain, &mem, &frame), 100);
        let mut got = [0u8; 50];
        mem.read_slice(&mut got, GuestAddress(BUF + 0x1000))
            .unwrap();
        assert_eq!(got, [0x5a; 50]);
        let small = q.build_desc_chain(&[desc(BUF, 99, true)]).unwrap();
        assert_eq!(write_rx_frame(small, &mem, &frame), 0);
        let read_only = q.build_desc_chain(&[desc(BUF, 200, false)]).unwrap();
        assert_eq!(write_rx_frame(read_only, &mem, &frame), 0);
    }
}
