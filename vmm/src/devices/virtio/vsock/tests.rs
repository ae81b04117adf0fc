//! Device-level tests: the test plays the guest driver on real split
//! virtqueues in guest memory, the device runs on a real event loop, and the
//! host side is real unix sockets.

use super::connection::BUF_ALLOC;
use super::packet::{
    Header, Op, HDR_LEN, HOST_CID, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::*;
use event_manager::{EventManager, SubscriberOps};
use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

const CID: u64 = 3;
const MEM_SIZE: usize = 0x100_0000;
/// Two descriptors per chain, so half the queue size in chains.
const SLOTS: u16 = QUEUE_SIZE / 2;
const RX_BASE: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x2000;
/// Payload room of a guest RX buffer (Linux uses 4 KiB).
const RX_DATA: u32 = 4096;
const TX_BASE: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x1_1000;
const MIB: usize = 1024 * 1024;

/// A split virtqueue seen from the driver side.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_idx: u16,
    /// The available index at the driver's last kick.
    kicked_at: u16,
}

impl Ring {
    /// A queue of `QUEUE_SIZE` at `base` (needs 0x3000 bytes). The layout is
    /// done here rather than with `MockSplitQueue`, whose used ring overlaps
    /// the available ring for queues this large (virtio-queue 0.18 sizes the
    /// available ring in elements instead of bytes).
    fn new(mem: &GuestMemoryMmap, base: u64) -> (Ring, Queue) {
        let ring = Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            used_idx: 0,
            kicked_at: 0,
        };
        mem.write_slice(&[0u8; 0x3000], GuestAddress(base)).unwrap();
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(ring.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(ring.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(ring.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        assert!(q.is_valid(mem));
        (ring, q)
    }

    /// Publishes a chain made of `parts` in descriptors `2*slot` and `2*slot+1`.
    fn push(&mut self, mem: &GuestMemoryMmap, slot: u16, parts: &[(u64, u32)], write: bool) {
        assert!(!parts.is_empty() && parts.len() <= 2);
        for (i, (addr, len)) in parts.iter().enumerate() {
            let idx = slot * 2 + i as u16;
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < parts.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let d = self.desc + 16 * u64::from(idx);
            mem.write_obj(*addr, GuestAddress(d)).unwrap();
            mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(flags as u16, GuestAddress(d + 12)).unwrap();
            mem.write_obj(idx + 1, GuestAddress(d + 14)).unwrap();
        }
        let at = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(slot * 2, GuestAddress(at)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The next used chain: (slot, bytes written).
    fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.used_idx {
            return None;
        }
        let e = self.used + 4 + 8 * u64::from(self.used_idx % QUEUE_SIZE);
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.used_idx = self.used_idx.wrapping_add(1);
        Some(((id / 2) as u16, len))
    }
}

/// The guest driver: keeps the RX queue full and sends packets on TX.
struct Driver {
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated: kicks only where the
    /// device asked for them.
    event_idx: bool,
    kicks: Vec<EventFd>,
    tx_free: Vec<u16>,
    sent: u32,
}

impl Driver {
    fn post_rx(&mut self, slot: u16) {
        // Header and payload in one buffer, or split, at varying points.
        let base = RX_BASE + u64::from(slot) * RX_SLOT;
        let total = HDR_LEN as u32 + RX_DATA;
        let parts: &[(u64, u32)] = match slot % 3 {
            0 => &[(base, total)],
            1 => &[(base, HDR_LEN as u32), (base + HDR_LEN as u64, RX_DATA)],
            _ => &[(base, 20), (base + 20, total - 20)],
        };
        self.rx.push(&self.mem, slot, parts, true);
    }

    /// Notifies queue `q` of what was posted since the last kick, as Linux does
    /// (`virtqueue_kick_prepare`): with EVENT_IDX only if the new buffers passed
    /// the device's `avail_event`.
    fn kick(&mut self, q: usize) -> bool {
        let ring = match q {
            RXQ => &mut self.rx,
            TXQ => &mut self.tx,
            _ => &mut self.ev,
        };
        let (old, new) = (ring.kicked_at, ring.avail_idx);
        ring.kicked_at = new;
        if self.event_idx {
            let at = GuestAddress(ring.used + 4 + 8 * u64::from(QUEUE_SIZE));
            let event: u16 = self.mem.read_obj(at).unwrap();
            if new.wrapping_sub(event).wrapping_sub(1) >= new.wrapping_sub(old) {
                return false;
            }
        }
        self.kicks[q].write(1).unwrap();
        true
    }

    /// Queues one packet on TX (without kicking); false if the ring is full.
    fn send(&mut self, hdr: &Header, data: &[u8]) -> bool {
        while let Some((slot, _)) = self.tx.pop_used(&self.mem) {
            self.tx_free.push(slot);
        }
        let Some(slot) = self.tx_free.pop() else {
            return false;
        };
        let base = TX_BASE + u64::from(slot) * TX_SLOT;
        let mut h = *hdr;
        h.len = data.len() as u32;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(base))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(base + HDR_LEN as u64))
            .unwrap();
        let total = (HDR_LEN + data.len()) as u32;
        // Alternate between one buffer and a separate header.
        self.sent += 1;
        if self.sent.is_multiple_of(2) || data.is_empty() {
            self.tx.push(&self.mem, slot, &[(base, total)], false);
        } else {
            self.tx.push(
                &self.mem,
                slot,
                &[
                    (base, HDR_LEN as u32),
                    (base + HDR_LEN as u64, data.len() as u32),
                ],
                false,
            );
        }
        true
    }

    /// Sends raw bytes as one TX buffer (for malformed packets).
    fn send_raw(&mut self, bytes: &[u8]) {
        let slot = self.tx_free.pop().unwrap();
        let base = TX_BASE + u64::from(slot) * TX_SLOT;
        self.mem.write_slice(bytes, GuestAddress(base)).unwrap();
        self.tx
            .push(&self.mem, slot, &[(base, bytes.len() as u32)], false);
    }

    /// Packets the device delivered; their buffers go back to the device.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((slot, len)) = self.rx.pop_used(&self.mem) {
            assert!(len as usize >= HDR_LEN, "short RX packet: {len}");
            let base = RX_BASE + u64::from(slot) * RX_SLOT;
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(base)).unwrap();
            let h = Header::from_bytes(&raw);
            assert_eq!(h.len as usize + HDR_LEN, len as usize, "used length");
            assert!(h.len <= RX_DATA, "packet larger than the buffer");
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(base + HDR_LEN as u64))
                .unwrap();
            out.push((h, data));
            self.post_rx(slot);
        }
        if !out.is_empty() {
            self.kick(RXQ);
        }
        out
    }
}

/// A device on an event loop with a guest driver.
struct Env {
    _dir: tempfile::TempDir,
    path: PathBuf,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    drv: Driver,
}

/// Where the event queue's buffers (8 bytes each) live.
const EV_BUFS: u64 = 0x2_8000;

impl Env {
    fn new() -> Env {
        Env::with(false)
    }

    /// A device whose driver negotiated `VIRTIO_RING_F_EVENT_IDX` or not.
    fn with(event_idx: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::new(CID, &path).unwrap()));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, rxq) = Ring::new(&mem, 0);
        let (tx, txq) = Ring::new(&mem, 0x1_0000);
        let (ev, evq) = Ring::new(&mem, 0x2_0000);
        let queues = [rxq, txq, evq].map(|mut q| {
            q.set_event_idx(event_idx);
            q
        });
        let kicks = {
            let d = dev.lock().unwrap();
            d.queue_events()
                .iter()
                .map(|e| e.try_clone().unwrap())
                .collect()
        };
        dev.lock()
            .unwrap()
            .activate(
                mem.clone(),
                queues.into(),
                Arc::new(IrqTrigger::new().unwrap()),
            )
            .unwrap();
        let mut drv = Driver {
            mem,
            rx,
            tx,
            ev,
            event_idx,
            kicks,
            tx_free: (0..SLOTS).rev().collect(),
            sent: 0,
        };
        for slot in 0..SLOTS {
            drv.post_rx(slot);
        }
        drv.kick(RXQ);
        let mut env = Env {
            _dir: dir,
            path,
            dev,
            em,
            drv,
        };
        env.pump();
        env
    }

    fn pump(&mut self) {
        self.em.run_with_timeout(10).unwrap();
    }

    /// Pumps until the guest received at least one packet.
    fn packets(&mut self) -> Vec<(Header, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = self.drv.recv();
            if !p.is_empty() {
                return p;
            }
            assert!(Instant::now() < deadline, "no packet for the guest");
            self.pump();
        }
    }

    /// Pumps until the device is idle for a moment; returns what arrived.
    fn settle(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut all = Vec::new();
        for _ in 0..5 {
            while self.em.run_with_timeout(20).unwrap() > 0 {}
            all.extend(self.drv.recv());
        }
        all
    }

    fn send(&mut self, hdr: &Header, data: &[u8]) {
        assert!(self.drv.send(hdr, data));
        self.drv.kick(TXQ);
    }

    /// Posts event buffer `slot` (8 bytes at `EV_BUFS`) on the event queue.
    fn post_event_buffer(&mut self, slot: u16) {
        let at = EV_BUFS + 8 * u64::from(slot);
        self.drv.ev.push(&self.drv.mem, slot, &[(at, 8)], true);
    }

    fn counts(&self) -> (usize, usize) {
        let d = self.dev.lock().unwrap();
        (d.muxer.connection_count(), d.muxer.registered_count())
    }
}

/// Listener, timer and wake-up: what stays registered with no connections.
const IDLE_FDS: usize = 3;

/// The guest side of one stream connection, with Linux-like flow control.
struct GuestConn {
    port: u32,
    host_port: u32,
    buf_alloc: u32,
    /// Received, not yet consumed by the "application".
    rx_buf: VecDeque<u8>,
    fwd_cnt: u32,
    fwd_sent: u32,
    update_due: bool,
    host_buf_alloc: u32,
    host_fwd_cnt: u32,
    tx_cnt: u32,
    /// Consumed data.
    received: Vec<u8>,
    /// Data to send.
    outgoing: VecDeque<u8>,
    host_shutdown: u32,
    shutdown_sent: bool,
    rst: bool,
    max_in_flight: usize,
}

impl GuestConn {
    fn new(port: u32, host_port: u32, buf_alloc: u32) -> Self {
        GuestConn {
            port,
            host_port,
            buf_alloc,
            rx_buf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_sent: 0,
            update_due: false,
            host_buf_alloc: 0,
            host_fwd_cnt: 0,
            tx_cnt: 0,
            received: Vec::new(),
            outgoing: VecDeque::new(),
            host_shutdown: 0,
            shutdown_sent: false,
            rst: false,
            max_in_flight: 0,
        }
    }

    fn hdr(&mut self, op: Op, flags: u32) -> Header {
        self.fwd_sent = self.fwd_cnt;
        self.update_due = false;
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: self.port,
            dst_port: self.host_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    fn on_packet(&mut self, h: &Header, data: &[u8]) {
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID));
        assert_eq!((h.src_port, h.dst_port), (self.host_port, self.port));
        assert_eq!(h.type_, TYPE_STREAM);
        assert_eq!(h.buf_alloc, BUF_ALLOC);
        assert!(!self.rst, "packet after RST: {h:?}");
        self.host_buf_alloc = h.buf_alloc;
        self.host_fwd_cnt = h.fwd_cnt;
        match h.op() {
            Some(Op::Rw) => {
                assert!(
                    self.host_shutdown & SHUTDOWN_SEND == 0,
                    "data after shutdown"
                );
                self.rx_buf.extend(data);
                self.max_in_flight = self.max_in_flight.max(self.rx_buf.len());
                assert!(
                    self.rx_buf.len() <= self.buf_alloc as usize,
                    "host overran the guest's credit: {} > {}",
                    self.rx_buf.len(),
                    self.buf_alloc
                );
            }
            Some(Op::Shutdown) => self.host_shutdown |= h.flags,
            Some(Op::Rst) => self.rst = true,
            Some(Op::CreditRequest) => self.update_due = true,
            Some(Op::CreditUpdate) | Some(Op::Response) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The application reads up to `max` bytes; `echo` sends them back.
    fn consume(&mut self, max: usize, echo: bool) {
        let n = max.min(self.rx_buf.len());
        let taken: Vec<u8> = self.rx_buf.drain(..n).collect();
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if echo {
            self.outgoing.extend(&taken);
        } else {
            self.received.extend(&taken);
        }
        // Like Linux: tell the host once a good part of the buffer is free again.
        if self.fwd_cnt.wrapping_sub(self.fwd_sent) >= self.buf_alloc / 4 {
            self.update_due = true;
        }
    }

    fn host_credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.host_fwd_cnt);
        self.host_buf_alloc.saturating_sub(in_flight) as usize
    }

    /// Sends what credit allows, in packets of up to `max_pkt` bytes.
    fn transmit(&mut self, drv: &mut Driver, max_pkt: usize) -> bool {
        let mut sent = false;
        while !self.outgoing.is_empty() && self.host_credit() > 0 {
            let n = self.outgoing.len().min(self.host_credit()).min(max_pkt);
            let data: Vec<u8> = self.outgoing.iter().take(n).copied().collect();
            let h = self.hdr(Op::Rw, 0);
            if !drv.send(&h, &data) {
                break;
            }
            self.outgoing.drain(..n);
            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
            sent = true;
        }
        if self.update_due {
            let h = self.hdr(Op::CreditUpdate, 0);
            sent |= drv.send(&h, &[]);
        }
        sent
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn config_space_and_activation() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Vsock::new(0x1_0203, &dir.path().join("v.sock")).unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(
        dev.avail_features(),
        VIRTIO_F_VERSION_1 | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    );
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 0x1_0203);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let err = dev
        .activate(mem, vec![Queue::new(256).unwrap()], irq)
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 3,
            got: 1
        }
    ));
}

#[test]
fn socket_path_handling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    assert!(matches!(
        Vsock::new(2, &path),
        Err(VsockError::InvalidCid(2))
    ));
    assert!(matches!(
        Vsock::new(u64::from(u32::MAX), &path),
        Err(VsockError::InvalidCid(_))
    ));
    let dev = Vsock::new(3, &path).unwrap();
    assert_eq!(dev.guest_cid(), 3);
    // A live listener is not stolen.
    assert!(matches!(Vsock::new(4, &path), Err(VsockError::InUse(_))));
    drop(dev);
    assert!(!path.exists(), "socket file left behind");
    // A stale socket file is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let dev = Vsock::new(3, &path).unwrap();
    drop(dev);
    // Something else is left alone.
    std::fs::write(&path, b"data").unwrap();
    assert!(matches!(
        Vsock::new(3, &path),
        Err(VsockError::NotASocket(_))
    ));
    assert!(path.exists());
}

#[test]
fn host_client_round_trip_of_1_mib() {
    host_client_round_trip_of_1_mib_with(false);
}

#[test]
fn host_client_round_trip_of_1_mib_with_event_idx() {
    host_client_round_trip_of_1_mib_with(true);
}

fn host_client_round_trip_of_1_mib_with(event_idx: bool) {
    let mut env = Env::with(event_idx);
    let data = pattern(MIB, 1);
    let path = env.path.clone();
    let expect = data.clone();
    let client = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(b"CONNECT 1234\n").unwrap();
        let line = read_line(&mut s);
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&expect).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut echoed = Vec::new();
        s.read_to_end(&mut echoed).unwrap();
        writer.join().unwrap();
        (line, echoed)
    });

    let p = env.packets();
    let (req, _) = &p[0];
    assert_eq!(req.op(), Some(Op::Request));
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, CID, 1234)
    );
    assert!(req.src_port >= 1 << 30);
    // A small guest buffer, so the host must wait for credit many times.
    let mut conn = GuestConn::new(1234, req.src_port, 64 * 1024);
    let h = conn.hdr(Op::Response, 0);
    env.send(&h, &[]);

    let deadline = Instant::now() + Duration::from_secs(60);
    while !conn.rst {
        env.pump();
        for (h, d) in env.drv.recv() {
            conn.on_packet(&h, &d);
        }
        conn.consume(24 * 1024, true);
        let mut kick = conn.transmit(&mut env.drv, 20_000);
        if conn.host_shutdown & SHUTDOWN_SEND != 0
            && conn.rx_buf.is_empty()
            && conn.outgoing.is_empty()
            && !conn.shutdown_sent
        {
            let h = conn.hdr(Op::Shutdown, SHUTDOWN_SEND | SHUTDOWN_RCV);
            conn.shutdown_sent = env.drv.send(&h, &[]);
            kick |= conn.shutdown_sent;
        }
        if kick {
            env.drv.kick(TXQ);
        }
        assert!(Instant::now() < deadline, "round trip timed out");
    }
    let (line, echoed) = client.join().unwrap();
    assert_eq!(line, format!("OK {}\n", req.src_port));
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echoed data differs");
    assert_eq!(
        conn.max_in_flight,
        64 * 1024,
        "the guest window was used fully"
    );
    env.settle();
    assert_eq!(env.counts(), (0, IDLE_FDS));
}

#[test]
fn guest_connection_to_a_host_socket_moves_1_mib_each_way() {
    guest_connection_to_a_host_socket_moves_1_mib_each_way_with(false);
}

#[test]
fn guest_connection_to_a_host_socket_moves_1_mib_each_way_with_event_idx() {
    guest_connection_to_a_host_socket_moves_1_mib_each_way_with(true);
}

fn guest_connection_to_a_host_socket_moves_1_mib_each_way_with(event_idx: bool) {
    let mut env = Env::with(event_idx);
    let listener = UnixListener::bind(format!("{}_5000", env.path.display())).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.reverse();
        s.write_all(&got).unwrap();
        got.reverse();
        got
    });
    let data = pattern(MIB, 2);
    let mut conn = GuestConn::new(40_000, 5000, 64 * 1024);
    let h = conn.hdr(Op::Request, 0);
    env.send(&h, &[]);
    let p = env.packets();
    assert_eq!(p.len(), 1);
    conn.on_packet(&p[0].0, &p[0].1);
    assert_eq!(p[0].0.op(), Some(Op::Response));
    conn.outgoing.extend(&data);

    let deadline = Instant::now() + Duration::from_secs(60);
    while !conn.rst {
        env.pump();
        for (h, d) in env.drv.recv() {
            conn.on_packet(&h, &d);
        }
        conn.consume(24 * 1024, false);
        let mut kick = conn.transmit(&mut env.drv, MAX_PKT_DATA);
        if conn.outgoing.is_empty() && !conn.shutdown_sent {
            let h = conn.hdr(Op::Shutdown, SHUTDOWN_SEND);
            conn.shutdown_sent = env.drv.send(&h, &[]);
            kick |= conn.shutdown_sent;
        }
        if kick {
            env.drv.kick(TXQ);
        }
        assert!(Instant::now() < deadline, "transfer timed out");
    }
    conn.consume(usize::MAX, false);
    let got = server.join().unwrap();
    assert!(got == data, "host received different data");
    let mut back = data.clone();
    back.reverse();
    assert_eq!(conn.received.len(), MIB);
    assert!(conn.received == back, "guest received different data");
    env.settle();
    assert_eq!(env.counts(), (0, IDLE_FDS));
}

#[test]
fn guest_connection_without_a_host_listener_is_reset() {
    let mut env = Env::new();
    let mut conn = GuestConn::new(40_001, 5001, 4096);
    let h = conn.hdr(Op::Request, 0);
    env.send(&h, &[]);
    let p = env.packets();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op(), Some(Op::Rst));
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5001, 40_001));
    assert_eq!(env.counts(), (0, IDLE_FDS));
}

#[test]
fn refused_and_malformed_requests() {
    let mut env = Env::new();
    // A guest that refuses: the client is closed.
    let mut client = UnixStream::connect(&env.path).unwrap();
    client.write_all(b"CONNECT 99\n").unwrap();
    let p = env.packets();
    let req = p[0].0;
    assert_eq!((req.op(), req.dst_port), (Some(Op::Request), 99));
    let mut conn = GuestConn::new(99, req.src_port, 4096);
    let h = conn.hdr(Op::Rst, 0);
    env.send(&h, &[]);
    env.settle();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 8];
    assert_eq!(client.read(&mut b).unwrap(), 0);

    // Bad CONNECT lines close the client without bothering the guest.
    for line in [&b"HELLO\n"[..], b"CONNECT abc\n", &[b'x'; 100]] {
        let mut c = UnixStream::connect(&env.path).unwrap();
        c.write_all(line).unwrap();
        assert!(env.settle().is_empty());
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // EOF, or a reset when unread bytes were left behind.
        match c.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{line:?}: {other:?}"),
        }
    }
    assert_eq!(env.counts(), (0, IDLE_FDS));
}

#[test]
fn malformed_guest_packets_are_answered_or_dropped() {
    let mut env = Env::new();
    let base = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 0,
        dst_port: 7,
        len: 0,
        type_: TYPE_STREAM,
        op: Op::Rw as u16,
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 0,
    };
    // Forged source CID: dropped silently.
    let mut h = base;
    h.src_cid = 99;
    h.src_port = 1;
    env.drv.send_raw(&h.to_bytes());
    // Unknown operation: RST.
    let mut h = base;
    h.src_port = 2;
    h.op = 42;
    env.drv.send_raw(&h.to_bytes());
    // Data for no connection: RST.
    let mut h = base;
    h.src_port = 3;
    h.len = 3;
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend_from_slice(b"abc");
    env.drv.send_raw(&bytes);
    // Length beyond the buffer: RST.
    let mut h = base;
    h.src_port = 4;
    h.len = 1000;
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend_from_slice(b"abc");
    env.drv.send_raw(&bytes);
    // Datagram type: RST.
    let mut h = base;
    h.src_port = 5;
    h.type_ = 2;
    env.drv.send_raw(&h.to_bytes());
    // Truncated header: dropped.
    env.drv.send_raw(&[1u8; 20]);
    // RST for no connection: dropped.
    let mut h = base;
    h.src_port = 6;
    h.op = Op::Rst as u16;
    env.drv.send_raw(&h.to_bytes());
    // Another CID: RST from that CID.
    let mut h = base;
    h.src_port = 8;
    h.dst_cid = 77;
    h.op = Op::Request as u16;
    env.drv.send_raw(&h.to_bytes());
    env.drv.kick(TXQ);
    let p = env.settle();
    let mut answered: Vec<(u32, u64)> = p
        .iter()
        .map(|(h, _)| {
            assert_eq!(h.op(), Some(Op::Rst));
            assert_eq!((h.dst_cid, h.src_port), (CID, 7));
            (h.dst_port, h.src_cid)
        })
        .collect();
    answered.sort();
    assert_eq!(
        answered,
        vec![
            (2, HOST_CID),
            (3, HOST_CID),
            (4, HOST_CID),
            (5, HOST_CID),
            (8, 77)
        ]
    );
    // All TX buffers came back.
    let mut returned = 0;
    while env.drv.tx.pop_used(&env.drv.mem).is_some() {
        returned += 1;
    }
    assert_eq!(returned, 8);
}

#[test]
fn a_flood_of_bad_packets_pauses_tx_instead_of_growing() {
    let mut env = Env::new();
    let mut h = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 0,
        dst_port: 9,
        len: 0,
        type_: TYPE_STREAM,
        op: Op::CreditUpdate as u16,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    let total = 2000u32;
    let mut sent = 0u32;
    // The guest takes nothing: its RX buffers fill up, RSTs queue up to the
    // limit, then the device stops taking TX packets.
    for _ in 0..20 {
        while sent < total {
            h.src_port = sent;
            if !env.drv.send(&h, &[]) {
                break;
            }
            sent += 1;
        }
        env.drv.kick(TXQ);
        env.pump();
    }
    assert_eq!(env.dev.lock().unwrap().muxer.rst_backlog(), 256);
    assert_eq!(sent, u32::from(SLOTS) + 256 + u32::from(SLOTS));
    // The guest catches up: everything is answered, in order.
    let mut answered = 0u32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered < total {
        while sent < total {
            h.src_port = sent;
            if !env.drv.send(&h, &[]) {
                break;
            }
            sent += 1;
        }
        env.drv.kick(TXQ);
        env.pump();
        for (r, _) in env.drv.recv() {
            assert_eq!((r.op(), r.dst_port), (Some(Op::Rst), answered));
            answered += 1;
        }
        assert!(Instant::now() < deadline);
    }
    assert_eq!(env.dev.lock().unwrap().muxer.rst_backlog(), 0);
}

#[test]
fn driver_reset_closes_host_connections() {
    let mut env = Env::new();
    let mut client = UnixStream::connect(&env.path).unwrap();
    client.write_all(b"CONNECT 80\n").unwrap();
    let p = env.packets();
    let mut conn = GuestConn::new(80, p[0].0.src_port, 4096);
    let h = conn.hdr(Op::Response, 0);
    env.send(&h, &[]);
    env.settle();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(read_line(&mut client), format!("OK {}\n", p[0].0.src_port));
    assert_eq!(env.counts(), (1, IDLE_FDS + 1));
    env.dev.lock().unwrap().reset();
    env.settle();
    let mut b = [0u8; 8];
    assert_eq!(client.read(&mut b).unwrap(), 0);
    assert_eq!(env.counts(), (0, IDLE_FDS));
}

#[test]
fn host_close_reaches_the_guest_and_data_sent_just_after_connect_is_kept() {
    let mut env = Env::new();
    let mut client = UnixStream::connect(&env.path).unwrap();
    // Data right behind the CONNECT line belongs to the stream.
    client.write_all(b"CONNECT 81\nearly").unwrap();
    let p = env.packets();
    let mut conn = GuestConn::new(81, p[0].0.src_port, 4096);
    let h = conn.hdr(Op::Response, 0);
    env.send(&h, &[]);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for (h, d) in env.settle() {
        conn.on_packet(&h, &d);
    }
    assert_eq!(read_line(&mut client), format!("OK {}\n", p[0].0.src_port));
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.host_shutdown == 0 {
        env.pump();
        for (h, d) in env.drv.recv() {
            conn.on_packet(&h, &d);
        }
        assert!(Instant::now() < deadline);
    }
    conn.consume(usize::MAX, false);
    assert_eq!(conn.received, b"early");
    assert_eq!(conn.host_shutdown, SHUTDOWN_SEND | SHUTDOWN_RCV);
    // The guest acknowledges with an RST (as Linux does); all is cleaned up.
    let h = conn.hdr(Op::Rst, 0);
    env.send(&h, &[]);
    assert!(env.settle().is_empty());
    assert_eq!(env.counts(), (0, IDLE_FDS));
}

#[test]
fn after_a_restore_host_connections_wait_until_the_guest_handled_the_reset() {
    after_a_restore_host_connections_wait_until_the_guest_handled_the_reset_with(false);
}

#[test]
fn after_a_restore_host_connections_wait_until_the_guest_handled_the_reset_with_event_idx() {
    after_a_restore_host_connections_wait_until_the_guest_handled_the_reset_with(true);
}

fn after_a_restore_host_connections_wait_until_the_guest_handled_the_reset_with(event_idx: bool) {
    let mut env = Env::with(event_idx);
    // Linux posts its event buffers at probe.
    for slot in 0..2 {
        env.post_event_buffer(slot);
    }
    env.drv.kick(EVQ);
    env.pump();
    env.dev.lock().unwrap().restored();
    let (slot, len) = env
        .drv
        .ev
        .pop_used(&env.drv.mem)
        .expect("a transport reset");
    assert_eq!(len, 4);
    let id: u32 = env
        .drv
        .mem
        .read_obj(GuestAddress(EV_BUFS + 8 * u64::from(slot)))
        .unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);

    let mut client = UnixStream::connect(&env.path).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    // A notification that is not the event buffer's return releases nothing.
    env.drv.kick(RXQ);
    assert!(
        env.settle().is_empty(),
        "a request before the reset was handled"
    );
    assert_eq!(env.counts().0, 1, "the request waits");

    // The guest handled the event and gives its buffer back, with a kick.
    env.post_event_buffer(slot);
    assert!(env.drv.kick(EVQ), "the device asked for no kick");
    let p = env.packets();
    assert_eq!(p[0].0.op(), Some(Op::Request));
    assert_eq!(p[0].0.dst_port, 1234);
}
