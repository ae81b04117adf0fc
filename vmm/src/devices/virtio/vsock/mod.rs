//! virtio-vsock (device type 19) implemented in the VMM, for hosts without
//! vhost-vsock, exposed on the host as "hybrid vsock" over unix sockets:
//!
//! - host-initiated: a client connects to `uds_path` and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <local_port>\n`
//!   and the socket is the stream (closed if the guest refuses or does not
//!   answer within 5 s);
//! - guest-initiated: a connection to CID 2, port `P` connects to the unix
//!   socket `<uds_path>_P`.
//!
//! Layout: `packet` parses and builds the 44-byte header; `connection` is
//! one connection's state machine and flow control; `muxer` owns the host
//! sockets and their event-loop registrations; this module is the virtio
//! device moving packets between the muxer and the RX/TX queues. The event
//! queue only carries the transport reset a VM restored from a snapshot gets:
//! its connections lived in another VMM process, so the guest must drop them
//! (its listening sockets stay, and take the CID the device now reports).
//! Until the guest has handled that reset, nothing reaches its RX queue: a host
//! connection it accepted first would be reset with the old ones, and one
//! addressed to the new CID before the guest learnt it would be refused.

mod connection;
mod error;
mod muxer;
mod packet;

#[cfg(test)]
mod tests;

use super::{
    device_type, guest_warning, ActivateError, IrqTrigger, RateLimit, VirtioDevice, INT_VRING,
    VIRTIO_F_VERSION_1,
};
use crate::counters;
pub use error::VsockError;
use event_manager::{EventOps, Events, MutEventSubscriber};
use muxer::Muxer;
use packet::{PacketError, HDR_LEN, MAX_PKT_DATA};
use std::io::Write;
use std::num::Wrapping;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; 3];
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    ev: Queue,
    irq: Arc<IrqTrigger>,
}

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2, 5.10.6.5), the event's
/// `le32 id`.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    muxer: Muxer,
    /// Bounce buffer for one packet's payload.
    buf: Vec<u8>,
    /// The event queue's available index when the transport reset was sent, until
    /// the guest handled it: Linux hands an event buffer back (the available
    /// index moves) only after acting on the event it held.
    reset_unhandled: Option<Wrapping<u16>>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("active", &self.active.is_some())
            .finish()
    }
}

/// Drains of the queues during one event.
#[derive(Default)]
struct Progress {
    rx_used: bool,
    tx_used: bool,
}

impl Vsock {
    /// A device for guest `guest_cid`, listening for host clients on
    /// `uds_path` (which is removed again when the device is dropped).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if !(3..=u64::from(u32::MAX - 1)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let mut queue_evts = Vec::with_capacity(QUEUE_SIZES.len());
        for _ in QUEUE_SIZES {
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?);
        }
        Ok(Vsock {
            guest_cid,
            queue_evts,
            active: None,
            muxer: Muxer::new(guest_cid, uds_path)?,
            buf: vec![0u8; MAX_PKT_DATA],
            reset_unhandled: None,
        })
    }

    /// What the device counts (notifications, connections each way).
    pub fn counters(&self) -> Arc<counters::Vsock> {
        self.muxer.counts.clone()
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Moves packets both ways until neither queue can make progress.
    fn run_queues(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if let Some(sent_at) = self.reset_unhandled {
            // An unreadable ring is a broken driver; holding RX would not mend it.
            if a.ev.avail_idx(&a.mem, Ordering::Acquire).ok() != Some(sent_at) {
                tracing::debug!("virtio-vsock: the guest handled the transport reset");
                self.reset_unhandled = None;
            }
        }
        let hold_rx = self.reset_unhandled.is_some();
        let mut progress = Progress::default();
        let mut rechecked = false;
        loop {
            let rx = if hold_rx {
                0
            } else {
                fill_rx(a, &mut self.muxer, &mut self.buf)
            };
            let (tx, stalled) = drain_tx(a, &mut self.muxer, &mut self.buf);
            progress.rx_used |= rx > 0;
            progress.tx_used |= tx > 0;
            // New guest packets may have produced answers; a stalled TX queue
            // may resume once the guest took some of them.
            if tx > 0 || (stalled && rx > 0) {
                rechecked = false;
                continue;
            }
            // With EVENT_IDX the driver kicks only past the index published here:
            // for its next TX packet, and for RX buffers while packets wait for
            // them. What it queued as that was published is taken now; a ring that
            // shows more but yields nothing (a bad available index) is not read
            // again, which would spin.
            let more_tx = !stalled && a.tx.enable_notification(&a.mem).unwrap_or(false);
            let more_rx = !hold_rx
                && self.muxer.has_rx()
                && a.rx.enable_notification(&a.mem).unwrap_or(false);
            if !(more_tx || more_rx) || (rechecked && rx == 0) {
                break;
            }
            rechecked = true;
        }
        let mut notify = false;
        if progress.rx_used {
            notify |= a.rx.needs_notification(&a.mem).unwrap_or(true);
        }
        if progress.tx_used {
            notify |= a.tx.needs_notification(&a.mem).unwrap_or(true);
        }
        if notify {
            a.irq.trigger(INT_VRING);
        }
    }
}

/// Fills guest RX buffers with what the muxer has; returns how many were used.
fn fill_rx(a: &mut Active, muxer: &mut Muxer, buf: &mut [u8]) -> usize {
    let mut used = 0;
    while muxer.has_rx() {
        let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
            break;
        };
        let head = chain.head_index();
        let len = match chain.writer(&a.mem) {
            Ok(mut w) if w.available_bytes() >= HDR_LEN => {
                let room = (w.available_bytes() - HDR_LEN).min(buf.len());
                let Some(hdr) = muxer.recv_pkt(&mut buf[..room]) else {
                    // Nothing after all: leave the buffer to the guest.
                    a.rx.go_to_previous_position();
                    break;
                };
                let data = &buf[..hdr.len as usize];
                if let Err(e) = w
                    .write_all(&hdr.to_bytes())
                    .and_then(|()| w.write_all(data))
                {
                    static WRITE: RateLimit = RateLimit::new();
                    guest_warning(
                        &WRITE,
                        &format_args!("vsock: writing a packet to guest memory: {e}"),
                    );
                }
                w.bytes_written() as u32
            }
            Ok(_) => {
                tracing::debug!("vsock: guest RX buffer smaller than a header");
                0
            }
            Err(e) => {
                tracing::debug!("vsock: bad guest RX buffer: {e}");
                0
            }
        };
        if let Err(e) = a.rx.add_used(&a.mem, head, len) {
            static RX_USED: RateLimit = RateLimit::new();
            guest_warning(
                &RX_USED,
                &format_args!("vsock: returning an RX buffer: {e}"),
            );
            break;
        }
        used += 1;
    }
    used
}

/// Hands guest TX packets to the muxer; returns how many were consumed and
/// whether it stopped early because answers are piling up.
fn drain_tx(a: &mut Active, muxer: &mut Muxer, buf: &mut [u8]) -> (usize, bool) {
    let mut used = 0;
    loop {
        if muxer.backlogged() {
            return (used, true);
        }
        let Some(chain) = a.tx.pop_descriptor_chain(&a.mem) else {
            return (used, false);
        };
        let head = chain.head_index();
        match chain.reader(&a.mem) {
            Ok(mut r) => {
                let available = r.available_bytes();
                match packet::read_packet(&mut r, available, buf) {
                    Ok((hdr, op)) => muxer.send_pkt(&hdr, op, &buf[..hdr.len as usize]),
                    Err(PacketError::Invalid { hdr, reason }) => {
                        tracing::debug!("vsock: invalid guest packet: {reason}");
                        muxer.reject(&hdr);
                    }
                    Err(e) => tracing::debug!("vsock: invalid guest packet: {e}"),
                }
            }
            Err(e) => tracing::debug!("vsock: bad guest TX buffer: {e}"),
        }
        if let Err(e) = a.tx.add_used(&a.mem, head, 0) {
            static TX_USED: RateLimit = RateLimit::new();
            guest_warning(&TX_USED, &format_args!("vsock: returning a TX buffer: {e}"));
            return (used, false);
        }
        used += 1;
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
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
        let [rx, tx, ev] = super::take_queues(queues)?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            ev,
            irq,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.reset_unhandled = None;
        // The guest forgot its sockets; ours go with them.
        self.muxer.reset();
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active
            .iter()
            .flat_map(|a| [a.rx.state(), a.tx.state(), a.ev.state()])
            .collect()
    }
    fn restored(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(chain) = a.ev.pop_descriptor_chain(&a.mem) else {
            // Without an event buffer the guest keeps its dead connections until
            // they time out; it posts them at probe, so this is a broken driver.
            tracing::warn!("virtio-vsock: no event buffer for the transport reset");
            return;
        };
        let head = chain.head_index();
        let mut writer = match chain.writer(&a.mem) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("virtio-vsock: bad event buffer: {e}");
                return;
            }
        };
        let written = match writer.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()) {
            Ok(()) => 4,
            Err(e) => {
                tracing::warn!("virtio-vsock: writing the transport reset: {e}");
                0
            }
        };
        if let Err(e) = a.ev.add_used(&a.mem, head, written) {
            tracing::warn!("virtio-vsock: returning the event buffer: {e}");
            return;
        }
        self.reset_unhandled = a.ev.avail_idx(&a.mem, Ordering::Acquire).ok();
        // The buffer it hands back shows the reset handled: its kick is wanted.
        super::kick_at_next_buffer(&mut a.ev, &a.mem);
        a.irq.trigger(INT_VRING);
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        match token as usize {
            RXQ | TXQ | EVQ => {
                self.muxer.counts.notifications.inc();
                let _ = self.queue_evts[token as usize].read();
            }
            _ => self
                .muxer
                .handle_event(token, events.fd(), events.event_set()),
        }
        self.run_queues();
        self.muxer.sync_epoll(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("registering vsock queue event {i}: {e}");
            }
        }
        self.muxer.sync_epoll(ops);
    }
}
