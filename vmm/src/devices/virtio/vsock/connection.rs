//! One vsock stream connection between a guest socket and a host unix stream.
//!
//! The connection is a state machine driven from three sides, none of which
//! knows about epoll:
//! - [`Connection::send_pkt`]: a packet the guest sent (TX queue);
//! - [`Connection::recv_pkt`]: fill a packet for the guest (RX queue), either
//!   a pending control packet or data read straight from the host stream;
//! - [`Connection::notify`]: the host stream became readable or writable.
//!
//! The owner asks [`Connection::interest`] which host events to watch,
//! [`Connection::wants_rx`] whether it has something for the guest, and
//! [`Connection::is_done`] whether it can be dropped.
//!
//! Flow control (virtio 1.2, 5.10.6.3): every packet we send carries our
//! `buf_alloc` and `fwd_cnt`. Host→guest we never send more than the guest's
//! credit, `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`; guest→host the data the
//! host stream cannot take right away is kept in `out_buf`, which the credit we
//! advertised bounds by [`BUF_ALLOC`]; a guest overrunning it is reset.

use super::packet::{Header, Op, HOST_CID, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;
use vmm_sys_util::epoll::EventSet;

/// Receive buffer we advertise per connection (guest→host bytes we hold).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// A credit update is sent once this many bytes were forwarded unannounced,
/// or when the guest believes less than this much room is left.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Identifies a connection: (host-side port, guest-side port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated; waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows (subject to the shutdown flags).
    Established,
    /// Aborted or finished; an RST may still be owed to the guest.
    Closed,
}

/// Control packets owed to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pending(u8);

impl Pending {
    const REQUEST: u8 = 1;
    const RESPONSE: u8 = 2;
    const RST: u8 = 4;
    const CREDIT_UPDATE: u8 = 8;
    const CREDIT_REQUEST: u8 = 16;

    fn set(&mut self, bit: u8) {
        self.0 |= bit;
    }
    fn take(&mut self, bit: u8) -> bool {
        let had = self.0 & bit != 0;
        self.0 &= !bit;
        had
    }
    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    fn any(self) -> bool {
        self.0 != 0
    }
}

/// A connection between a guest stream socket and a host unix stream.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    key: ConnKey,
    guest_cid: u64,
    state: State,
    pending: Pending,
    /// The host stream reported readable and has not yet returned EAGAIN.
    readable: bool,
    /// Host-initiated connections give up on the guest at this instant.
    deadline: Option<Instant>,
    // Host → guest.
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host stream reached EOF (a SHUTDOWN went or goes to the guest).
    local_eof: bool,
    // Guest → host.
    /// Payload bytes received from the guest.
    rx_cnt: u32,
    /// Payload bytes written to the host stream.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,
    /// Guest data the host stream has not taken yet.
    out_buf: VecDeque<u8>,
    /// Shutdown flags the guest sent.
    peer_shutdown: u32,
    /// We shut the host stream's write side down (after the guest's SEND shutdown).
    write_shut: bool,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, state: State) -> Self {
        Connection {
            stream,
            key,
            guest_cid,
            state,
            pending: Pending::default(),
            readable: false,
            deadline: None,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            local_eof: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            out_buf: VecDeque::new(),
            peer_shutdown: 0,
            write_shut: false,
        }
    }

    /// A host-initiated connection: a REQUEST is owed to the guest, which must
    /// answer before `deadline`. `stream` must be non-blocking.
    pub fn new_local(stream: UnixStream, key: ConnKey, guest_cid: u64, deadline: Instant) -> Self {
        let mut c = Connection::new(stream, key, guest_cid, State::Connecting);
        c.pending.set(Pending::REQUEST);
        c.deadline = Some(deadline);
        c
    }

    /// A guest-initiated connection whose host side is connected: a RESPONSE is
    /// owed to the guest. `req` is the guest's REQUEST; `stream` must be
    /// non-blocking.
    pub fn new_peer(stream: UnixStream, key: ConnKey, guest_cid: u64, req: &Header) -> Self {
        let mut c = Connection::new(stream, key, guest_cid, State::Established);
        c.pending.set(Pending::RESPONSE);
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c
    }

    /// The connection's key.
    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// The host stream's descriptor.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Gives the host stream up (for deferred closing).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// When a host-initiated connection times out, if it is still connecting.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.state == State::Connecting)
    }

    /// Whether the connection was initiated by a host client.
    pub fn is_local_init(&self) -> bool {
        self.deadline.is_some()
    }

    /// Bytes the guest can still take (host → guest).
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest claiming to have consumed more than we sent gets no credit.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes of our receive buffer still free (guest → host).
    fn rx_free(&self) -> u32 {
        BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }

    /// Whether host data may go to the guest now.
    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && !self.local_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// The host stream events to watch; empty means "do not watch at all"
    /// (peer hang-ups are reported regardless of interest, so an idle stream
    /// must leave the epoll set or it would spin).
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state != State::Established {
            return set;
        }
        if self.can_send_data() && !self.readable {
            set |= EventSet::IN;
        }
        if !self.out_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Whether [`Connection::recv_pkt`] may produce a packet.
    pub fn wants_rx(&self) -> bool {
        self.pending.any() || (self.readable && self.can_send_data())
    }

    /// Whether the connection is over and owes the guest nothing.
    pub fn is_done(&self) -> bool {
        self.state == State::Closed && !self.pending.has(Pending::RST)
    }

    /// Aborts the connection: the host stream is shut and an RST is owed to
    /// the guest.
    pub fn reset(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.pending = Pending(Pending::RST);
        self.readable = false;
        self.out_buf = VecDeque::new();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Resets a host-initiated connection the guest did not answer by `now`.
    pub fn check_deadline(&mut self, now: Instant) {
        if self.deadline().is_some_and(|d| d <= now) {
            tracing::debug!(key = ?self.key, "vsock: guest did not answer the connection request");
            let never_sent = self.pending.has(Pending::REQUEST);
            self.reset();
            if never_sent {
                // The guest never heard of it (no RX buffers, or no driver
                // yet): there is nothing to reset on its side.
                self.pending = Pending::default();
            }
        }
    }

    fn header(&mut self, op: Op, len: u32, flags: u32) -> Header {
        // Every packet carries our credit, so nothing else need announce it.
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending.take(Pending::CREDIT_UPDATE);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Produces the next packet for the guest; data goes to `buf` (its length
    /// is the room in the guest's buffer) and the header says how much.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<Header> {
        if self.pending.take(Pending::RST) {
            return Some(self.header(Op::Rst, 0, 0));
        }
        if self.state == State::Closed {
            self.pending = Pending::default();
            return None;
        }
        if self.pending.take(Pending::REQUEST) {
            return Some(self.header(Op::Request, 0, 0));
        }
        if self.pending.take(Pending::RESPONSE) {
            return Some(self.header(Op::Response, 0, 0));
        }
        if self.readable && self.can_send_data() {
            if let Some(h) = self.read_host(buf) {
                return Some(h);
            }
        }
        if self.pending.take(Pending::CREDIT_UPDATE) {
            return Some(self.header(Op::CreditUpdate, 0, 0));
        }
        if self.pending.take(Pending::CREDIT_REQUEST) {
            return Some(self.header(Op::CreditRequest, 0, 0));
        }
        None
    }

    fn read_host(&mut self, buf: &mut [u8]) -> Option<Header> {
        let max = buf.len().min(MAX_PKT_DATA).min(self.peer_credit() as usize);
        if max == 0 {
            return None;
        }
        match self.stream.read(&mut buf[..max]) {
            Ok(0) => {
                self.readable = false;
                self.local_eof = true;
                if self.peer_shutdown & SHUTDOWN_SEND != 0 && self.out_buf.is_empty() {
                    // Both directions are finished: close for good.
                    tracing::debug!(key = ?self.key, "vsock: connection closed on both sides");
                    self.reset();
                    return self.recv_pkt(buf);
                }
                // The client may only have shut its write side down and still
                // want the guest's answer; if it is gone altogether, say so.
                let flags = if peer_hung_up(&self.stream) {
                    SHUTDOWN_SEND | SHUTDOWN_RCV
                } else {
                    SHUTDOWN_SEND
                };
                Some(self.header(Op::Shutdown, 0, flags))
            }
            Ok(n) => {
                // n <= max <= MAX_PKT_DATA, so it fits in u32.
                let n32 = n as u32;
                self.tx_cnt = self.tx_cnt.wrapping_add(n32);
                if self.peer_credit() == 0 {
                    self.pending.set(Pending::CREDIT_REQUEST);
                }
                Some(self.header(Op::Rw, n32, 0))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                self.readable = false;
                None
            }
            Err(e) => {
                tracing::debug!(key = ?self.key, "vsock: reading the host stream: {e}");
                self.reset();
                self.recv_pkt(buf)
            }
        }
    }

    /// Takes a packet the guest sent on this connection.
    pub fn send_pkt(&mut self, hdr: &Header, op: Op, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        match op {
            Op::Rst => {
                tracing::debug!(key = ?self.key, "vsock: guest reset the connection");
                self.state = State::Closed;
                self.pending = Pending::default();
                self.out_buf = VecDeque::new();
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            Op::Response if self.state == State::Connecting => self.accept(),
            Op::Request | Op::Response => {
                tracing::debug!(key = ?self.key, ?op, "vsock: unexpected handshake packet");
                self.reset();
            }
            _ if self.state == State::Connecting => {
                tracing::debug!(key = ?self.key, ?op, "vsock: packet before the handshake");
                self.reset();
            }
            Op::Shutdown => {
                self.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.after_write();
            }
            Op::Rw => self.take_data(data),
            Op::CreditUpdate => {}
            Op::CreditRequest => self.pending.set(Pending::CREDIT_UPDATE),
        }
    }

    /// The guest accepted a host-initiated connection: tell the host client.
    fn accept(&mut self) {
        self.state = State::Established;
        let line = format!("OK {}\n", self.key.local_port);
        // Nothing was written to this fresh stream before, so its send buffer
        // takes the whole line at once unless the client is gone.
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                tracing::debug!(key = ?self.key, "vsock: host-initiated connection established");
            }
            other => {
                tracing::debug!(key = ?self.key, "vsock: telling the client OK: {other:?}");
                self.reset();
            }
        }
    }

    fn take_data(&mut self, data: &[u8]) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            tracing::debug!(key = ?self.key, "vsock: data after the guest's send shutdown");
            self.reset();
            return;
        }
        // data.len() <= MAX_PKT_DATA (checked by the parser).
        let len = data.len() as u32;
        if len > self.rx_free() {
            tracing::debug!(key = ?self.key, len, "vsock: guest overran its credit");
            self.reset();
            return;
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        let mut done = 0;
        if self.out_buf.is_empty() {
            match write_some(&mut self.stream, data) {
                Ok(n) => done = n,
                Err(e) => {
                    tracing::debug!(key = ?self.key, "vsock: writing the host stream: {e}");
                    self.reset();
                    return;
                }
            }
            self.fwd_cnt = self.fwd_cnt.wrapping_add(done as u32);
        }
        self.out_buf.extend(&data[done..]);
        self.after_write();
    }

    /// Writes buffered guest data to the host stream.
    fn flush(&mut self) {
        while !self.out_buf.is_empty() {
            let (front, _) = self.out_buf.as_slices();
            match write_some(&mut self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.out_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) => {
                    tracing::debug!(key = ?self.key, "vsock: writing the host stream: {e}");
                    self.reset();
                    return;
                }
            }
        }
        if self.out_buf.is_empty() && self.out_buf.capacity() > MAX_PKT_DATA {
            // Do not keep a full buffer's worth of memory per idle connection.
            self.out_buf = VecDeque::new();
        }
        self.after_write();
    }

    /// Credit announcements and shutdown handling once guest data moved on.
    fn after_write(&mut self) {
        if self.state != State::Established {
            return;
        }
        let unannounced = self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent);
        let believed_free = BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt_sent));
        if unannounced > 0
            && (unannounced >= CREDIT_UPDATE_THRESHOLD || believed_free < CREDIT_UPDATE_THRESHOLD)
        {
            self.pending.set(Pending::CREDIT_UPDATE);
        }
        if self.peer_shutdown & SHUTDOWN_SEND == 0 || !self.out_buf.is_empty() {
            return;
        }
        // The guest sends no more and everything it sent reached the host.
        if self.local_eof || self.peer_shutdown & SHUTDOWN_RCV != 0 {
            tracing::debug!(key = ?self.key, "vsock: guest closed the connection");
            self.reset();
        } else if !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// The host stream reported `events` (only those from [`Connection::interest`]
    /// are acted on; hang-ups and errors count as both).
    pub fn notify(&mut self, events: EventSet) {
        let interest = self.interest();
        let hup = events.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP);
        if interest.contains(EventSet::IN) && (hup || events.contains(EventSet::IN)) {
            self.readable = true;
        }
        if interest.contains(EventSet::OUT) && (hup || events.contains(EventSet::OUT)) {
            self.flush();
        }
    }
}

/// Writes as much of `data` as the non-blocking stream takes now.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether the other end of a unix stream is gone for good (not merely shut
/// its write side down): `POLLHUP` is only raised once both directions closed.
fn peer_hung_up(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call, the count
    // is 1 and a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLHUP != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CID: u64 = 3;
    const KEY: ConnKey = ConnKey {
        local_port: 1 << 30,
        peer_port: 1234,
    };

    fn guest(op: Op, len: u32, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: KEY.peer_port,
            dst_port: KEY.local_port,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn rx(c: &mut Connection) -> Option<(Header, Vec<u8>)> {
        let mut buf = vec![0u8; 4096];
        c.recv_pkt(&mut buf)
            .map(|h| (h, buf[..h.len as usize].to_vec()))
    }

    fn op_of(p: &Option<(Header, Vec<u8>)>) -> Option<Op> {
        p.as_ref().and_then(|(h, _)| h.op())
    }

    /// A host-initiated connection the guest has accepted with `buf_alloc`.
    fn established(buf_alloc: u32) -> (Connection, UnixStream) {
        let (host, client) = pair();
        let mut c = Connection::new_local(host, KEY, CID, Instant::now() + Duration::from_secs(5));
        let (req, _) = rx(&mut c).unwrap();
        assert_eq!(req.op(), Some(Op::Request));
        c.send_pkt(&guest(Op::Response, 0, 0, buf_alloc, 0), Op::Response, &[]);
        let mut line = [0u8; 14];
        (&client).read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        (c, client)
    }

    #[test]
    fn host_initiated_handshake() {
        let (host, _client) = pair();
        let mut c = Connection::new_local(host, KEY, CID, Instant::now() + Duration::from_secs(5));
        assert!(c.wants_rx());
        assert!(c.interest().is_empty());
        let (h, _) = rx(&mut c).unwrap();
        assert_eq!(
            (
                h.op(),
                h.src_cid,
                h.dst_cid,
                h.src_port,
                h.dst_port,
                h.buf_alloc
            ),
            (
                Some(Op::Request),
                HOST_CID,
                CID,
                KEY.local_port,
                KEY.peer_port,
                BUF_ALLOC
            )
        );
        assert!(!c.wants_rx());
        assert!(c.deadline().is_some());
        let (c, _client) = established(4096);
        assert_eq!(c.interest(), EventSet::IN);
        assert!(c.deadline().is_none());
    }

    #[test]
    fn guest_rst_while_connecting_closes_the_client() {
        let (host, client) = pair();
        let mut c = Connection::new_local(host, KEY, CID, Instant::now() + Duration::from_secs(5));
        rx(&mut c);
        c.send_pkt(&guest(Op::Rst, 0, 0, 0, 0), Op::Rst, &[]);
        assert!(c.is_done());
        let mut b = [0u8; 4];
        assert_eq!((&client).read(&mut b).unwrap(), 0);
    }

    #[test]
    fn timeout_resets_a_connecting_connection() {
        let (host, client) = pair();
        let now = Instant::now();
        let mut c = Connection::new_local(host, KEY, CID, now + Duration::from_secs(1));
        rx(&mut c);
        c.check_deadline(now);
        assert!(!c.is_done());
        c.check_deadline(now + Duration::from_secs(2));
        assert_eq!(op_of(&rx(&mut c)), Some(Op::Rst));
        assert!(c.is_done());
        let mut b = [0u8; 4];
        assert_eq!((&client).read(&mut b).unwrap(), 0);
    }

    #[test]
    fn timeout_before_the_request_went_out_owes_nothing() {
        let (host, client) = pair();
        let now = Instant::now();
        let mut c = Connection::new_local(host, KEY, CID, now + Duration::from_secs(1));
        c.check_deadline(now + Duration::from_secs(2));
        assert!(c.is_done());
        assert!(rx(&mut c).is_none());
        let mut b = [0u8; 4];
        assert_eq!((&client).read(&mut b).unwrap(), 0);
    }

    #[test]
    fn data_before_the_response_is_a_protocol_error() {
        let (host, _client) = pair();
        let mut c = Connection::new_local(host, KEY, CID, Instant::now() + Duration::from_secs(5));
        rx(&mut c);
        c.send_pkt(&guest(Op::Rw, 3, 0, 4096, 0), Op::Rw, b"abc");
        assert_eq!(op_of(&rx(&mut c)), Some(Op::Rst));
        assert!(c.is_done());
    }

    #[test]
    fn guest_initiated_connection_responds_first() {
        let (host, client) = pair();
        let req = guest(Op::Request, 0, 0, 8192, 0);
        let mut c = Connection::new_peer(host, KEY, CID, &req);
        (&client).write_all(b"hello").unwrap();
        c.notify(EventSet::IN);
        let (h, _) = rx(&mut c).unwrap();
        assert_eq!(h.op(), Some(Op::Response));
        let (h, data) = rx(&mut c).unwrap();
        assert_eq!((h.op(), data.as_slice()), (Some(Op::Rw), &b"hello"[..]));
    }

    #[test]
    fn host_to_guest_respects_the_guest_credit() {
        let (mut c, client) = established(5000);
        (&client).write_all(&[7u8; 12000]).unwrap();
        c.notify(EventSet::IN);
        assert!(c.interest().is_empty(), "readable: no need to watch");
        let (h, d) = rx(&mut c).unwrap();
        assert_eq!((h.op(), d.len()), (Some(Op::Rw), 4096));
        let (h, d) = rx(&mut c).unwrap();
        assert_eq!((h.op(), d.len()), (Some(Op::Rw), 904));
        // Out of credit: ask for more once, then stay quiet without watching.
        assert_eq!(op_of(&rx(&mut c)), Some(Op::CreditRequest));
        assert!(rx(&mut c).is_none());
        assert!(!c.wants_rx());
        assert!(c.interest().is_empty());
        // The guest consumed 3000 bytes.
        c.send_pkt(
            &guest(Op::CreditUpdate, 0, 0, 5000, 3000),
            Op::CreditUpdate,
            &[],
        );
        assert!(c.wants_rx());
        let (h, d) = rx(&mut c).unwrap();
        assert_eq!((h.op(), d.len()), (Some(Op::Rw), 3000));
        assert_eq!(op_of(&rx(&mut c)), Some(Op::CreditRequest));
        // Everything consumed: the remaining 4000 bytes flow, then EAGAIN.
        c.send_pkt(
            &guest(Op::CreditUpdate, 0, 0, 5000, 8000),
            Op::CreditUpdate,
            &[],
        );
        let (_, d) = rx(&mut c).unwrap();
        assert_eq!(d.len(), 4000);
        assert!(rx(&mut c).is_none());
        assert_eq!(c.interest(), EventSet::IN);
    }

    #[test]
    fn a_lying_fwd_cnt_gives_no_credit() {
        let (mut c, client) = established(5000);
        c.send_pkt(
            &guest(Op::CreditUpdate, 0, 0, 5000, 100),
            Op::CreditUpdate,
            &[],
        );
        (&client).write_all(b"x").unwrap();
        c.notify(EventSet::IN);
        assert!(rx(&mut c).is_none());
        assert!(c.interest().is_empty());
    }

    #[test]
    fn guest_to_host_buffers_and_announces_credit() {
        let (mut c, client) = established(4096);
        let chunk = vec![1u8; MAX_PKT_DATA];
        // Fill the client's socket buffers until data has to wait in out_buf.
        let mut sent = 0u32;
        while c.out_buf.is_empty() {
            c.send_pkt(
                &guest(Op::Rw, MAX_PKT_DATA as u32, 0, 4096, 0),
                Op::Rw,
                &chunk,
            );
            sent += MAX_PKT_DATA as u32;
            assert!(sent < 64 * 1024 * 1024, "socket never filled up");
        }
        assert!(c.interest().contains(EventSet::OUT));
        // Keep sending within credit until the buffer is full.
        while c.rx_free() > 0 {
            let n = c.rx_free().min(MAX_PKT_DATA as u32);
            c.send_pkt(&guest(Op::Rw, n, 0, 4096, 0), Op::Rw, &chunk[..n as usize]);
            sent += n;
        }
        assert!(c.out_buf.len() <= BUF_ALLOC as usize);
        // One byte more than the credit is a reset.
        let (mut c2, _client2) = established(4096);
        let mut over = 0;
        while c2.state == State::Established && over < 10_000 {
            c2.send_pkt(
                &guest(Op::Rw, MAX_PKT_DATA as u32, 0, 4096, 0),
                Op::Rw,
                &chunk,
            );
            over += 1;
        }
        assert_eq!(op_of(&rx(&mut c2)), Some(Op::Rst));
        // Drain the client: all bytes arrive, and credit updates announce them.
        let mut got = 0u32;
        let mut buf = vec![0u8; 1 << 16];
        let mut updates = 0;
        client.set_nonblocking(true).unwrap();
        while got < sent {
            match (&client).read(&mut buf) {
                Ok(n) => got += n as u32,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.notify(EventSet::OUT);
                    while let Some((h, _)) = rx(&mut c) {
                        assert_eq!(h.op(), Some(Op::CreditUpdate));
                        assert_eq!(h.fwd_cnt, c.fwd_cnt);
                        updates += 1;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, sent);
        assert!(updates > 0);
        assert!(c.out_buf.is_empty());
        assert_eq!(c.interest(), EventSet::IN);
    }

    #[test]
    fn credit_request_is_answered() {
        let (mut c, _client) = established(4096);
        c.send_pkt(
            &guest(Op::CreditRequest, 0, 0, 4096, 0),
            Op::CreditRequest,
            &[],
        );
        let (h, _) = rx(&mut c).unwrap();
        assert_eq!(
            (h.op(), h.buf_alloc, h.fwd_cnt),
            (Some(Op::CreditUpdate), BUF_ALLOC, 0)
        );
    }

    #[test]
    fn host_eof_is_a_half_close() {
        let (mut c, client) = established(4096);
        (&client).write_all(b"bye").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        c.notify(EventSet::IN);
        let (_, d) = rx(&mut c).unwrap();
        assert_eq!(d, b"bye");
        let (h, _) = rx(&mut c).unwrap();
        assert_eq!((h.op(), h.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
        assert!(c.interest().is_empty());
        // The guest still answers, then closes.
        c.send_pkt(&guest(Op::Rw, 5, 0, 4096, 3), Op::Rw, b"reply");
        c.send_pkt(
            &guest(Op::Shutdown, 0, SHUTDOWN_SEND | SHUTDOWN_RCV, 4096, 3),
            Op::Shutdown,
            &[],
        );
        assert_eq!(op_of(&rx(&mut c)), Some(Op::Rst));
        assert!(c.is_done());
        let mut got = Vec::new();
        client.set_nonblocking(false).unwrap();
        (&client).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"reply");
    }

    #[test]
    fn host_close_is_a_full_shutdown() {
        let (mut c, client) = established(4096);
        drop(client);
        c.notify(EventSet::IN | EventSet::HANG_UP);
        let (h, _) = rx(&mut c).unwrap();
        assert_eq!(
            (h.op(), h.flags),
            (Some(Op::Shutdown), SHUTDOWN_SEND | SHUTDOWN_RCV)
        );
        // The guest acknowledges with an RST.
        c.send_pkt(&guest(Op::Rst, 0, 0, 4096, 0), Op::Rst, &[]);
        assert!(c.is_done());
    }

    #[test]
    fn guest_half_close_then_host_close() {
        let (mut c, client) = established(4096);
        c.send_pkt(&guest(Op::Rw, 2, 0, 4096, 0), Op::Rw, b"hi");
        c.send_pkt(
            &guest(Op::Shutdown, 0, SHUTDOWN_SEND, 4096, 0),
            Op::Shutdown,
            &[],
        );
        assert!(c.write_shut);
        let mut got = Vec::new();
        (&client).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hi");
        // Host→guest still flows.
        (&client).write_all(b"answer").unwrap();
        c.notify(EventSet::IN);
        let (_, d) = rx(&mut c).unwrap();
        assert_eq!(d, b"answer");
        // Data after the guest's SEND shutdown is a violation; instead the
        // host closes and both sides are done.
        drop(client);
        c.notify(EventSet::HANG_UP);
        assert_eq!(op_of(&rx(&mut c)), Some(Op::Rst));
        assert!(c.is_done());
    }

    #[test]
    fn guest_close_waits_for_buffered_data() {
        let (mut c, client) = established(4096);
        let chunk = vec![9u8; MAX_PKT_DATA];
        let mut sent = 0;
        while c.out_buf.is_empty() {
            c.send_pkt(
                &guest(Op::Rw, MAX_PKT_DATA as u32, 0, 4096, 0),
                Op::Rw,
                &chunk,
            );
            sent += MAX_PKT_DATA;
        }
        c.send_pkt(
            &guest(Op::Shutdown, 0, SHUTDOWN_SEND | SHUTDOWN_RCV, 4096, 0),
            Op::Shutdown,
            &[],
        );
        // Not closed yet: data is still buffered.
        assert!(!c.is_done());
        assert_eq!(c.interest(), EventSet::OUT);
        client.set_nonblocking(true).unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match (&client).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.notify(EventSet::OUT);
                    while rx(&mut c).is_some() {}
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, sent);
        assert!(c.is_done());
    }

    #[test]
    fn writing_to_a_gone_client_resets() {
        let (mut c, client) = established(4096);
        drop(client);
        c.send_pkt(&guest(Op::Rw, 3, 0, 4096, 0), Op::Rw, b"abc");
        assert_eq!(op_of(&rx(&mut c)), Some(Op::Rst));
        assert!(c.is_done());
        // Late packets are ignored.
        c.send_pkt(&guest(Op::Rw, 3, 0, 4096, 0), Op::Rw, b"abc");
        assert!(rx(&mut c).is_none());
    }

    #[test]
    fn guest_rcv_shutdown_stops_host_reads() {
        let (mut c, client) = established(4096);
        c.send_pkt(
            &guest(Op::Shutdown, 0, SHUTDOWN_RCV, 4096, 0),
            Op::Shutdown,
            &[],
        );
        (&client).write_all(b"ignored").unwrap();
        c.notify(EventSet::IN);
        assert!(rx(&mut c).is_none());
        assert!(c.interest().is_empty());
    }
}
