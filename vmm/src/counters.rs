//! What the VMM counts for the control socket's `counters` request: vCPU exits by
//! kind ([`Exits`], in the vCPUs' shared control block), and per device its queue
//! notifications and I/O ([`Block`], [`Net`], [`Vsock`], each made by its device and
//! collected by the builder into [`Devices`]).
//!
//! Each count is a relaxed atomic add on a path that already did far more work (an
//! exit, a request, a frame): tallies read now and then, ordering nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmlet_vmm_api::control::{BlockCounters, CountersReply, NetCounters, VsockCounters};

/// One count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// vCPU exits to the VMM, over all vCPUs.
#[derive(Debug, Default)]
pub struct Exits {
    /// Port reads.
    pub io_in: Counter,
    /// Port writes.
    pub io_out: Counter,
    /// MMIO reads.
    pub mmio_read: Counter,
    /// MMIO writes.
    pub mmio_write: Counter,
    /// `KVM_RUN` interrupted by a signal (pause, stop).
    pub interrupted: Counter,
    /// Any other exit.
    pub other: Counter,
}

/// A block device's counts.
#[derive(Debug, Default)]
pub struct Block {
    /// Queue notifications.
    pub notifications: Counter,
    /// Bytes read for the guest.
    pub read_bytes: Counter,
    /// Reads that succeeded.
    pub read_ops: Counter,
    /// Bytes written for the guest.
    pub write_bytes: Counter,
    /// Writes that succeeded.
    pub write_ops: Counter,
    /// Flushes that succeeded.
    pub flush_ops: Counter,
}

/// A network card's counts (frames without their virtio-net header).
#[derive(Debug, Default)]
pub struct Net {
    /// Queue notifications of both queues.
    pub notifications: Counter,
    /// Bytes handed to the guest.
    pub rx_bytes: Counter,
    /// Frames handed to the guest.
    pub rx_packets: Counter,
    /// Bytes the guest sent.
    pub tx_bytes: Counter,
    /// Frames the guest sent.
    pub tx_packets: Counter,
    /// Frames the guest sent that were dropped: malformed (a bad virtio-net header,
    /// an offload it did not negotiate) or refused by the tap.
    pub tx_dropped: Counter,
    /// Frames dropped on the way in because the guest's receive buffers were unusable.
    pub rx_dropped: Counter,
}

/// The vsock device's counts.
#[derive(Debug, Default)]
pub struct Vsock {
    /// Queue notifications.
    pub notifications: Counter,
    /// Connections host clients opened to the guest.
    pub from_host: Counter,
    /// Connections the guest opened to host sockets.
    pub from_guest: Counter,
}

/// The counts of a VM's devices, by the names the reply gives them.
#[derive(Debug, Default)]
pub struct Devices {
    /// Block devices by drive ID.
    pub block: Vec<(String, Arc<Block>)>,
    /// Network cards by name (`net0`, ...).
    pub net: Vec<(String, Arc<Net>)>,
    /// The vsock device.
    pub vsock: Option<Arc<Vsock>>,
}

/// The reply to `counters`.
pub fn reply(exits: &Exits, devices: &Devices) -> CountersReply {
    let exits = [
        ("io_in", &exits.io_in),
        ("io_out", &exits.io_out),
        ("mmio_read", &exits.mmio_read),
        ("mmio_write", &exits.mmio_write),
        ("interrupted", &exits.interrupted),
        ("other", &exits.other),
    ]
    .into_iter()
    .map(|(kind, c)| (kind.to_owned(), c.get()))
    .collect();
    let block = devices
        .block
        .iter()
        .map(|(id, b)| {
            let counts = BlockCounters {
                queue_notifications: b.notifications.get(),
                read_bytes: b.read_bytes.get(),
                read_ops: b.read_ops.get(),
                write_bytes: b.write_bytes.get(),
                write_ops: b.write_ops.get(),
                flush_ops: b.flush_ops.get(),
            };
            (id.clone(), counts)
        })
        .collect();
    let net = devices
        .net
        .iter()
        .map(|(id, n)| {
            let counts = NetCounters {
                queue_notifications: n.notifications.get(),
                rx_bytes: n.rx_bytes.get(),
                rx_packets: n.rx_packets.get(),
                tx_bytes: n.tx_bytes.get(),
                tx_packets: n.tx_packets.get(),
                tx_dropped: n.tx_dropped.get(),
                rx_dropped: n.rx_dropped.get(),
            };
            (id.clone(), counts)
        })
        .collect();
    let vsock = devices.vsock.as_ref().map(|v| VsockCounters {
        queue_notifications: v.notifications.get(),
        connections_from_host: v.from_host.get(),
        connections_from_guest: v.from_guest.get(),
    });
    CountersReply {
        exits,
        block,
        net,
        vsock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_names_every_exit_kind_and_device() {
        let exits = Exits::default();
        exits.io_out.add(3);
        exits.mmio_write.inc();
        let scratch = Arc::new(Block::default());
        scratch.read_bytes.add(4096);
        scratch.read_ops.inc();
        let net = Arc::new(Net::default());
        net.tx_packets.inc();
        let devices = Devices {
            block: vec![("scratch".into(), scratch)],
            net: vec![("net0".into(), net)],
            vsock: Some(Arc::default()),
        };
        let r = reply(&exits, &devices);
        assert_eq!(r.exits.len(), 6);
        assert_eq!((r.exits["io_out"], r.exits["mmio_write"]), (3, 1));
        assert_eq!(r.block["scratch"].read_bytes, 4096);
        assert_eq!(r.block["scratch"].read_ops, 1);
        assert_eq!(r.net["net0"].tx_packets, 1);
        assert_eq!(r.vsock, Some(VsockCounters::default()));
    }
}
