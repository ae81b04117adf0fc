//! virtio-net on a tap device, implemented in the VMM (this host has no
//! vhost-net). The tap reads and writes frames behind the same 12-byte
//! `virtio_net_hdr_v1` the guest uses, so checksum and TCP segmentation offloads
//! pass through: the guest's features set the tap's (`header`), and each header the
//! guest sends is checked before the tap sees it. With `MRG_RXBUF` a large received
//! segment spans several of the guest's small receive buffers; with `EVENT_IDX` the
//! guest kicks and is interrupted only when the other side is waiting.

mod header;
mod tap;

pub use header::{check_tx, BadHeader, OFFLOADS};
pub use tap::{Tap, TapError, TUNSETOFFLOAD, VNET_HDR_LEN};

use super::{device_type, ActivateError, Chain, IrqTrigger, RateLimit, VirtioDevice, INT_VRING};
use crate::counters;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
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
    /// Features the guest accepted.
    acked: u64,
    /// Offloads are offered where the tap takes them.
    offloads: bool,
    /// Length of a frame left in `rx_buf` while the guest had no receive buffer.
    pending_rx: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Receive buffers taken for one frame (head, bytes written), reused.
    rx_heads: Vec<(u16, u32)>,
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

/// What became of a received frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Rx {
    /// Written into the buffers taken.
    Delivered,
    /// The guest has too few buffers posted: the frame waits, nothing was taken.
    NoRoom,
    /// The guest's buffers were unusable: they went back empty, the frame is gone.
    Dropped,
}

impl Net {
    /// A card on tap `tap_name` with `mac` (random if `None`), offering the guest
    /// checksum and segmentation offloads if `offloads` and the tap takes them.
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>, offloads: bool) -> Result<Self, NetError> {
        let tap = Tap::open(tap_name)?;
        let offloads = offloads && tap.supports_offloads();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Net {
            tap,
            mac: mac.unwrap_or_else(random_mac),
            queue_evts: vec![evt()?, evt()?],
            active: None,
            offloads,
            acked: 0,
            pending_rx: None,
            rx_buf: vec![0u8; MAX_FRAME],
            tx_buf: vec![0u8; MAX_FRAME],
            rx_heads: Vec::with_capacity(usize::from(QUEUE_SIZES[RX])),
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
        let mergeable = self.acked & header::F_MRG_RXBUF != 0;
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
            let frame = &mut self.rx_buf[..len];
            let mut outcome = take_rx_buffers(rxq, &a.mem, frame, mergeable, &mut self.rx_heads);
            // Buffers that came in as the kick was asked for are tried; a bounded
            // number of times, since only a driver rewriting its ring keeps them coming.
            for _ in 0..RX_RETRIES {
                if !matches!(outcome, Rx::NoRoom) || !super::kick_at_next_buffer(rxq, &a.mem) {
                    break;
                }
                outcome = take_rx_buffers(rxq, &a.mem, frame, mergeable, &mut self.rx_heads);
            }
            match outcome {
                Rx::NoRoom => {
                    // Kept until the guest posts buffers (its rx kick).
                    self.pending_rx = Some(len);
                    break;
                }
                Rx::Dropped => self.counts.rx_dropped.inc(),
                Rx::Delivered => {
                    self.counts.rx_packets.inc();
                    self.counts.rx_bytes.add((len - VNET_HDR_LEN) as u64);
                }
            }
            for &(head, written) in &self.rx_heads {
                if let Err(e) = rxq.add_used(&a.mem, head, written) {
                    static RX_USED: RateLimit = RateLimit::new();
                    super::device_error(
                        &RX_USED,
                        "virtio-net",
                        &format_args!("returning receive buffer {head}: {e}"),
                    );
                    break;
                }
                used = true;
            }
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
        let acked = self.acked;
        let notify = super::drain_queue("virtio-net", &mut a.queues[TX], &a.mem, |chain, mem| {
            let Some(len) = read_tx_frame(chain, mem, buf) else {
                counts.tx_dropped.inc();
                return 0;
            };
            let mut hdr = [0u8; VNET_HDR_LEN];
            hdr.copy_from_slice(&buf[..VNET_HDR_LEN]);
            if let Err(e) = header::check_tx(&hdr, len, acked) {
                static BAD: RateLimit = RateLimit::new();
                super::guest_warning(&BAD, &format_args!("virtio-net: dropped a frame: {e}"));
                counts.tx_dropped.inc();
                return 0;
            }
            match tap.write_frame(&buf[..len]) {
                Ok(_) => {
                    counts.tx_packets.inc();
                    counts.tx_bytes.add((len - VNET_HDR_LEN) as u64);
                }
                Err(e) => {
                    counts.tx_dropped.inc();
                    tracing::debug!("tap write: {e}");
                }
            }
            0
        });
        if notify {
            a.irq.trigger(INT_VRING);
        }
    }
}

/// Times a frame that found too few receive buffers is tried again at once.
const RX_RETRIES: usize = 8;

/// Takes the receive buffers `frame` (virtio-net header first) needs from `rxq`
/// and writes it into them, recording each (head, bytes written) in `heads` for the
/// caller to return as used. Without `mergeable` the frame goes whole into one
/// buffer; with it, into as many as it fills, their count in the header's
/// `num_buffers`. Nothing is taken when the ring holds too few buffers.
pub fn take_rx_buffers(
    rxq: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    mergeable: bool,
    heads: &mut Vec<(u16, u32)>,
) -> Rx {
    heads.clear();
    if !mergeable {
        let Some(chain) = rxq.pop_descriptor_chain(mem) else {
            return Rx::NoRoom;
        };
        frame[header::NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        let head = chain.head_index();
        let written = write_rx_frame(chain, mem, frame);
        heads.push((head, written));
        return if written > 0 {
            Rx::Delivered
        } else {
            Rx::Dropped
        };
    }
    // One pass: each buffer is written as it is taken, and the first one's header is
    // written again at the end with the count. Buffers taken for a frame that then
    // finds too few are given back unused; what was written in them is never seen.
    let mut first = None;
    let mut rest: &[u8] = frame;
    while !rest.is_empty() {
        let Some(chain) = rxq.pop_descriptor_chain(mem) else {
            for _ in 0..heads.len() {
                rxq.go_to_previous_position();
            }
            // A full ring that cannot hold the frame never will: it is dropped, the
            // buffers kept for the next.
            let full = heads.len() >= usize::from(rxq.size());
            heads.clear();
            return if full { Rx::Dropped } else { Rx::NoRoom };
        };
        let head = chain.head_index();
        // The first buffer holds the whole header (virtio 1.2, 5.1.6.3.1).
        let min = if heads.is_empty() { VNET_HDR_LEN } else { 1 };
        let written = match chain.clone().writer(mem) {
            Ok(mut w) if w.available_bytes() >= min => {
                let n = w.available_bytes().min(rest.len());
                match w.write_all(&rest[..n]) {
                    Ok(()) => n,
                    Err(_) => w.bytes_written(),
                }
            }
            _ => {
                // A broken buffer: all taken so far go back empty, as does the frame.
                heads.iter_mut().for_each(|h| h.1 = 0);
                heads.push((head, 0));
                return Rx::Dropped;
            }
        };
        if first.is_none() {
            first = Some(chain);
        }
        rest = &rest[written.min(rest.len())..];
        heads.push((head, written as u32));
    }
    let count = heads.len() as u16; // At most the queue size.
    frame[header::NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&count.to_le_bytes());
    if let Some(Ok(mut w)) = first.map(|c| c.writer(mem)) {
        // It held the whole header the first time.
        let _ = w.write_all(&frame[..VNET_HDR_LEN]);
    }
    Rx::Delivered
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
        let offloads = if self.offloads { header::OFFLOADS } else { 0 };
        super::VIRTIO_F_VERSION_1
            | header::F_MAC
            | header::F_MRG_RXBUF
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | offloads
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
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
        let offloads = header::tap_offloads(self.acked);
        if let Err(e) = self.tap.set_offloads(offloads) {
            // Plain frames still reach a guest that takes offloaded ones.
            tracing::warn!(
                "tap {}: cannot set offloads {offloads:#x}: {e}",
                self.tap.name()
            );
        }
        self.active = Some(Active { mem, queues, irq });
        // Frames may have queued on the tap before the driver was ready.
        self.process_rx();
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.pending_rx = None;
        self.acked = 0;
        if let Err(e) = self.tap.set_offloads(0) {
            tracing::warn!("tap {}: cannot clear offloads: {e}", self.tap.name());
        }
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

    /// A queue of 16 whose ring holds one single-buffer chain per `(addr, len)`.
    fn rx_queue<'a>(
        mem: &'a GuestMemoryMmap,
        bufs: &[(u64, u32)],
    ) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
        let q = MockSplitQueue::new(mem, 16);
        let descs: Vec<RawDescriptor> = bufs.iter().map(|&(a, l)| desc(a, l, true)).collect();
        q.add_desc_chains(&descs, 0).unwrap();
        let queue = q.create_queue::<Queue>().unwrap();
        (q, queue)
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_large_frame_spans_merged_buffers_counted_in_its_header() {
        let mem = mem();
        let bufs = [(BUF, 100), (BUF + 0x1000, 100), (BUF + 0x2000, 100)];
        let (_q, mut queue) = rx_queue(&mem, &bufs);
        let mut f = frame(250);
        let mut heads = Vec::new();
        let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
        assert!(matches!(got, Rx::Delivered));
        assert_eq!(heads, vec![(0, 100), (1, 100), (2, 50)]);
        let mut want = frame(250);
        want[header::NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&3u16.to_le_bytes());
        let mut seen = Vec::new();
        for (&(addr, _), &(_, n)) in bufs.iter().zip(&heads) {
            let mut part = vec![0u8; n as usize];
            mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
            seen.extend(part);
        }
        assert_eq!(seen, want);
    }

    #[test]
    fn a_frame_waits_whole_until_the_guest_posts_enough_buffers() {
        let mem = mem();
        let (q, mut queue) = rx_queue(&mem, &[(BUF, 100), (BUF + 0x1000, 100)]);
        let mut f = frame(250);
        let mut heads = Vec::new();
        let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
        assert!(matches!(got, Rx::NoRoom));
        assert!(heads.is_empty());
        assert_eq!(queue.next_avail(), 0, "nothing taken");
        // One more buffer: all three are used, from the first.
        q.add_desc_chains(&[desc(BUF + 0x2000, 100, true)], 2)
            .unwrap();
        let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
        assert!(matches!(got, Rx::Delivered));
        assert_eq!(heads, vec![(0, 100), (1, 100), (2, 50)]);
    }

    #[test]
    fn a_frame_short_of_buffers_asks_for_a_kick_at_the_guests_next_one() {
        let mem = mem();
        let (q, mut queue) = rx_queue(&mem, &[(BUF, 100), (BUF + 0x1000, 100)]);
        queue.set_event_idx(true);
        let mut f = frame(250);
        let mut heads = Vec::new();
        let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
        assert!(matches!(got, Rx::NoRoom));
        assert!(
            !super::super::kick_at_next_buffer(&mut queue, &mem),
            "no buffer came in"
        );
        // `avail_event`, after the used ring's 16 elements: the driver kicks once it
        // moves past 2, its next buffer; at 0 (where the device stands) it never would.
        let avail_event: u16 = mem
            .read_obj(GuestAddress(queue.used_ring() + 4 + 8 * 16))
            .unwrap();
        assert_eq!(avail_event, 2);
        assert_eq!(queue.next_avail(), 0, "the position is kept");
        // The driver's test as it posts one more (`vring_need_event`, from 2 to 3).
        let (old, new) = (2u16, 3u16);
        assert!(new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old));
        q.add_desc_chains(&[desc(BUF + 0x2000, 100, true)], 2)
            .unwrap();
        let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
        assert!(matches!(got, Rx::Delivered));
    }

    #[test]
    fn a_frame_larger_than_a_full_ring_is_dropped_and_the_buffers_kept() {
        let mem = mem();
        let bufs: Vec<(u64, u32)> = (0..16).map(|i| (BUF + i * 0x1000, 20)).collect();
        let (_q, mut queue) = rx_queue(&mem, &bufs);
        let mut f = frame(16 * 20 + 1);
        let mut heads = Vec::new();
        let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
        assert!(matches!(got, Rx::Dropped));
        assert!(heads.is_empty());
        assert_eq!(queue.next_avail(), 0);
        let mut f = frame(16 * 20);
        let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
        assert!(matches!(got, Rx::Delivered));
        assert_eq!(heads.len(), 16);
    }

    #[test]
    fn unusable_receive_buffers_go_back_empty_with_the_frame_dropped() {
        let mem = mem();
        // A first buffer too small for the header; an empty one after a good one.
        for bufs in [vec![(BUF, 11)], vec![(BUF, 100), (BUF + 0x1000, 0)]] {
            let (_q, mut queue) = rx_queue(&mem, &bufs);
            let mut f = frame(250);
            let mut heads = Vec::new();
            let got = take_rx_buffers(&mut queue, &mem, &mut f, true, &mut heads);
            assert!(matches!(got, Rx::Dropped));
            assert_eq!(heads.len(), bufs.len());
            assert!(heads.iter().all(|&(_, n)| n == 0));
        }
    }

    #[test]
    fn without_merging_a_frame_takes_one_buffer_whole() {
        let mem = mem();
        let (_q, mut queue) = rx_queue(&mem, &[(BUF, 100), (BUF + 0x1000, 300)]);
        let mut f = frame(250);
        let mut heads = Vec::new();
        // Too small: dropped into an empty buffer, not spread.
        let got = take_rx_buffers(&mut queue, &mem, &mut f, false, &mut heads);
        assert!(matches!(got, Rx::Dropped));
        assert_eq!(heads, vec![(0, 0)]);
        let got = take_rx_buffers(&mut queue, &mem, &mut f, false, &mut heads);
        assert!(matches!(got, Rx::Delivered));
        assert_eq!(heads, vec![(1, 250)]);
        let mut n = [0u8; 2];
        mem.read_slice(
            &mut n,
            GuestAddress(BUF + 0x1000 + header::NUM_BUFFERS as u64),
        )
        .unwrap();
        assert_eq!(u16::from_le_bytes(n), 1);
    }

    /// `ifconfig NAME up` in the calling thread's network namespace.
    fn link_up(name: &str) {
        // SAFETY: a socket for the ioctls below; checked and closed here.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(sock >= 0);
        // SAFETY: ifreq is plain data; zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: `req` names the interface and lives across both calls.
        unsafe {
            assert_eq!(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req), 0);
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(sock, libc::SIOCSIFFLAGS, &req), 0);
            libc::close(sock);
        }
    }

    /// Frames the tap `name` took from its reader, from the calling thread's namespace.
    fn frames_into(name: &str) -> u64 {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let line = dev
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}:")))
            .unwrap();
        // The tap's receive side is what its reader wrote.
        line.split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn malformed_guest_headers_never_reach_the_tap() {
        // A tap of its own in a network namespace of this thread alone (needs root).
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            let mut net = Net::new("vt0", Some([2, 0, 0, 0, 0, 9]), true).unwrap();
            assert!(net.offloads);
            assert_ne!(net.avail_features() & header::F_HOST_TSO4, 0);
            link_up("vt0");
            let mem = mem();
            let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
            let tx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
            // The guest took checksum offload but no segmentation.
            net.set_acked_features(
                super::super::VIRTIO_F_VERSION_1 | header::F_CSUM | header::F_GUEST_CSUM,
            );
            net.activate(
                mem.clone(),
                vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
                Arc::new(IrqTrigger::new().unwrap()),
            )
            .unwrap();
            // Broadcast ARP-sized frames: headers for TSO (not negotiated), an unknown
            // flag, a checksum past the end, then a good one with a partial checksum.
            let headers = [
                header::hdr(1, 1, 1448, 34, 16),
                header::hdr(4, 0, 0, 0, 0),
                header::hdr(1, 0, 0, 60, 0),
                header::hdr(1, 0, 0, 34, 6),
            ];
            let mut descs = Vec::new();
            for (i, h) in headers.iter().enumerate() {
                let at = BUF + 0x1000 * i as u64;
                let mut f = h.to_vec();
                f.extend([0xff; 6]);
                f.extend([2, 0, 0, 0, 0, 9]);
                f.extend([0x08, 0x00]);
                f.resize(VNET_HDR_LEN + 60, 0x45);
                mem.write_slice(&f, GuestAddress(at)).unwrap();
                descs.push(desc(at, f.len() as u32, false));
            }
            tx.add_desc_chains(&descs, 0).unwrap();
            let before = frames_into("vt0");
            net.process_tx();
            let c = net.counters();
            assert_eq!((c.tx_dropped.get(), c.tx_packets.get()), (3, 1));
            assert_eq!(
                frames_into("vt0") - before,
                1,
                "only the good frame reached the tap"
            );
        })
        .join()
        .unwrap();
    }
}
