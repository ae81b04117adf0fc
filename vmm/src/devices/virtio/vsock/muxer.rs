//! Hybrid vsock on the host: connections multiplexed over one unix listener.
//!
//! - Host-initiated: a client connects to `uds_path` and writes
//!   `CONNECT <port>\n`; we send the guest a REQUEST from a fresh local port
//!   and, once it answers, write `OK <local_port>\n` back (Firecracker's
//!   convention).
//! - Guest-initiated: a REQUEST to the host's port `P` connects to the unix
//!   socket `<uds_path>_P`; RESPONSE on success, RST otherwise.
//!
//! The muxer owns every host descriptor. It records which events each one
//! needs and applies the changes to the event loop in [`Muxer::sync_epoll`];
//! closed streams stay open until then so that they leave the epoll set before
//! their descriptor number can be reused.

use super::connection::{ConnKey, Connection};
use super::error::VsockError;
use super::packet::{Header, Op, HOST_CID};
use crate::counters;
use crate::devices::virtio::{guest_warning, RateLimit};
use event_manager::{EventOps, Events};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Event-loop tokens for the muxer's descriptors (the device uses 0..=2).
pub const TOKEN_LISTENER: u32 = 3;
/// The timeout timer.
pub const TOKEN_TIMER: u32 = 4;
/// Any host stream (looked up by descriptor).
pub const TOKEN_STREAM: u32 = 5;
/// Self-wake-up, so that work done off the event loop (a reset) is applied.
pub const TOKEN_WAKE: u32 = 6;

/// Most host streams (clients and connections) alive at once.
const MAX_STREAMS: usize = 1024;
/// Time a client has to send its `CONNECT` line, and the guest to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often deadlines are checked while any is pending.
const TICK: Duration = Duration::from_millis(250);
/// Longest `CONNECT <port>` line accepted.
const MAX_LINE: usize = 32;
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Connections accepted per listener wake-up.
const ACCEPT_BATCH: usize = 16;
/// RSTs for unknown connections queued before guest TX processing pauses.
const MAX_RST_BACKLOG: usize = 256;

/// A host client that has not sent its `CONNECT` line yet.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// All host-side state of the vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    /// (device, inode) of the socket file we created, to remove only ours.
    uds_id: (u64, u64),
    listener: UnixListener,
    /// Accept failed (out of descriptors?): stop watching until the next tick.
    listener_paused: bool,
    timer: TimerFd,
    timer_armed: bool,
    wake: EventFd,
    clients: HashMap<RawFd, Client>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Local ports of host-initiated connections.
    local_ports: HashSet<u32>,
    next_port: u32,
    /// Connections that may have a packet for the guest, round robin.
    rxq: VecDeque<ConnKey>,
    queued: HashSet<ConnKey>,
    /// RSTs answering packets that match no connection.
    rst_queue: VecDeque<Header>,
    /// What each descriptor is registered for in the event loop.
    registered: HashMap<RawFd, EventSet>,
    /// Descriptors whose registration may be stale.
    dirty: HashSet<RawFd>,
    /// Closed streams, dropped once out of the epoll set.
    graveyard: Vec<UnixStream>,
    /// Connections made (the device's notifications are counted there).
    pub(super) counts: Arc<counters::Vsock>,
}

impl Muxer {
    /// Binds the listener at `uds_path`. A stale socket file (nobody listening)
    /// is replaced; a live one is an error.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        let listener = crate::uds::bind(uds_path)?;
        let meta = std::fs::metadata(uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.to_owned(),
            source,
        })?;
        let timer = TimerFd::new().map_err(|e| VsockError::Timer(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(VsockError::Timer)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?;
        let mut m = Muxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            uds_id: (meta.dev(), meta.ino()),
            listener,
            listener_paused: false,
            timer,
            timer_armed: false,
            wake,
            clients: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            local_ports: HashSet::new(),
            next_port: FIRST_LOCAL_PORT,
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            rst_queue: VecDeque::new(),
            registered: HashMap::new(),
            dirty: HashSet::new(),
            graveyard: Vec::new(),
            counts: Arc::default(),
        };
        m.dirty.insert(m.listener.as_raw_fd());
        m.dirty.insert(m.timer.as_raw_fd());
        m.dirty.insert(m.wake.as_raw_fd());
        Ok(m)
    }

    /// Handles an event-loop event for one of the muxer's descriptors.
    pub fn handle_event(&mut self, token: u32, fd: RawFd, events: EventSet) {
        match token {
            TOKEN_LISTENER => self.accept(),
            TOKEN_TIMER => self.tick(),
            TOKEN_WAKE => {
                let _ = self.wake.read();
            }
            TOKEN_STREAM => {
                if self.clients.contains_key(&fd) {
                    self.read_connect_line(fd);
                } else if let Some(&key) = self.by_fd.get(&fd) {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.notify(events);
                    }
                    self.touch(key);
                }
                // Else: a stale event for a stream closed earlier in this batch.
            }
            _ => {}
        }
    }

    fn streams(&self) -> usize {
        self.clients.len() + self.conns.len()
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match accept_nonblocking(&self.listener) {
                Ok(stream) => {
                    if self.streams() >= MAX_STREAMS {
                        tracing::warn!("vsock: too many connections, refusing a host client");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.clients.insert(
                        fd,
                        Client {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + CONNECT_TIMEOUT,
                        },
                    );
                    self.dirty.insert(fd);
                    self.arm_timer();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Level-triggered: the listener would wake us forever.
                    tracing::warn!("vsock: accepting a host client: {e}; pausing the listener");
                    self.listener_paused = true;
                    self.dirty.insert(self.listener.as_raw_fd());
                    self.arm_timer();
                    return;
                }
            }
        }
    }

    fn drop_client(&mut self, fd: RawFd) {
        if let Some(c) = self.clients.remove(&fd) {
            self.graveyard.push(c.stream);
            self.dirty.insert(fd);
        }
    }

    /// Reads a client's `CONNECT <port>\n` byte by byte, so that data the
    /// client sends right behind it stays in the socket for the guest.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut b = [0u8; 1];
            match client.stream.read(&mut b) {
                Ok(0) => {
                    self.drop_client(fd);
                    return;
                }
                Ok(_) if b[0] == b'\n' => match parse_connect(&client.line) {
                    Some(port) => break port,
                    None => {
                        tracing::debug!(
                            line = %String::from_utf8_lossy(&client.line),
                            "vsock: bad CONNECT line"
                        );
                        self.drop_client(fd);
                        return;
                    }
                },
                Ok(_) if client.line.len() >= MAX_LINE => {
                    tracing::debug!("vsock: CONNECT line too long");
                    self.drop_client(fd);
                    return;
                }
                Ok(_) => client.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("vsock: reading a CONNECT line: {e}");
                    self.drop_client(fd);
                    return;
                }
            }
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        let local_port = self.alloc_port();
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        tracing::debug!(?key, "vsock: host client connecting to guest port {port}");
        let conn = Connection::new_local(
            client.stream,
            key,
            self.guest_cid,
            Instant::now() + CONNECT_TIMEOUT,
        );
        self.local_ports.insert(local_port);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.counts.from_host.inc();
        self.touch(key);
    }

    fn alloc_port(&mut self) -> u32 {
        // At most MAX_STREAMS ports are taken, far fewer than the range.
        loop {
            let p = self.next_port;
            // u32::MAX is VMADDR_PORT_ANY.
            self.next_port = if p >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.local_ports.contains(&p) {
                return p;
            }
        }
    }

    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        match self.timer.reset(TICK, Some(TICK)) {
            Ok(()) => self.timer_armed = true,
            Err(e) => tracing::warn!("vsock: arming the timeout timer: {e}"),
        }
    }

    fn tick(&mut self) {
        // Non-blocking: a stale wake-up just reads EAGAIN.
        let _ = self.timer.wait();
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            tracing::debug!("vsock: host client sent no CONNECT line in time");
            self.drop_client(fd);
        }
        let mut waiting = !self.clients.is_empty();
        let keys: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline().is_some())
            .map(|c| c.key())
            .collect();
        for key in keys {
            if let Some(c) = self.conns.get_mut(&key) {
                c.check_deadline(now);
                waiting |= c.deadline().is_some();
            }
            self.touch(key);
        }
        if self.listener_paused {
            self.listener_paused = false;
            self.dirty.insert(self.listener.as_raw_fd());
        }
        if !waiting {
            match self.timer.clear() {
                Ok(()) => self.timer_armed = false,
                Err(e) => tracing::warn!("vsock: disarming the timeout timer: {e}"),
            }
        }
    }

    /// Re-files a connection after anything happened to it: queues it for RX,
    /// marks its registration stale, or closes it.
    fn touch(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        let fd = c.fd();
        self.dirty.insert(fd);
        if c.is_done() {
            if let Some(c) = self.conns.remove(&key) {
                if c.is_local_init() {
                    self.local_ports.remove(&key.local_port);
                }
                self.by_fd.remove(&fd);
                self.graveyard.push(c.into_stream());
            }
        } else if c.wants_rx() && self.queued.insert(key) {
            self.rxq.push_back(key);
        }
    }

    /// Takes a packet the guest sent.
    pub fn send_pkt(&mut self, hdr: &Header, op: Op, data: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            tracing::debug!(
                src_cid = hdr.src_cid,
                "vsock: dropping a packet with a forged source"
            );
            return;
        }
        if hdr.dst_cid != HOST_CID {
            tracing::debug!(dst_cid = hdr.dst_cid, "vsock: packet for an unknown CID");
            self.queue_rst(hdr, op);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            Some(c) => {
                c.send_pkt(hdr, op, data);
                self.touch(key);
            }
            None if op == Op::Request => self.connect_to_host(hdr, key),
            None => self.queue_rst(hdr, op),
        }
    }

    /// Answers an invalid packet: its connection, if any, is reset.
    pub fn reject(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(c) = self.conns.get_mut(&key) {
            c.reset();
            self.touch(key);
        } else {
            self.queue_rst(hdr, Op::Rw);
        }
    }

    fn queue_rst(&mut self, hdr: &Header, op: Op) {
        // Never answer an RST with an RST; the queue is bounded because the
        // device stops taking guest packets while it is full.
        if op != Op::Rst && self.rst_queue.len() < 2 * MAX_RST_BACKLOG {
            self.rst_queue.push_back(Header::rst_reply(hdr));
        }
    }

    fn connect_to_host(&mut self, hdr: &Header, key: ConnKey) {
        if self.streams() >= MAX_STREAMS {
            static TOO_MANY: RateLimit = RateLimit::new();
            guest_warning(
                &TOO_MANY,
                &"vsock: too many connections, refusing the guest",
            );
            self.queue_rst(hdr, Op::Request);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                tracing::debug!(
                    ?key,
                    "vsock: guest connected to {}",
                    Path::new(&path).display()
                );
                let conn = Connection::new_peer(stream, key, self.guest_cid, hdr);
                self.by_fd.insert(conn.fd(), key);
                self.conns.insert(key, conn);
                self.counts.from_guest.inc();
                self.touch(key);
            }
            Err(e) => {
                tracing::debug!(
                    ?key,
                    "vsock: guest connection to {}: {e}",
                    Path::new(&path).display()
                );
                self.queue_rst(hdr, Op::Request);
            }
        }
    }

    /// Whether a packet for the guest may be ready.
    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rxq.is_empty()
    }

    /// Whether the device should stop taking guest packets until the guest
    /// has taken some of ours.
    pub fn backlogged(&self) -> bool {
        self.rst_queue.len() >= MAX_RST_BACKLOG
    }

    /// Produces the next packet for the guest (data in `buf[..hdr.len]`).
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(h) = self.rst_queue.pop_front() {
            return Some(h);
        }
        // One pass at most: a connection that cannot use this buffer (too
        // small for its data) is queued again and must not be asked forever.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            self.queued.remove(&key);
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let pkt = c.recv_pkt(buf);
            // Still something to say: back of the queue, for fairness.
            self.touch(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Drops every connection (driver reset). Host clients that are still
    /// sending their `CONNECT` line are kept.
    pub fn reset(&mut self) {
        for (_, c) in self.conns.drain() {
            self.dirty.insert(c.fd());
            self.graveyard.push(c.into_stream());
        }
        self.by_fd.clear();
        self.local_ports.clear();
        self.rxq.clear();
        self.queued.clear();
        self.rst_queue.clear();
        // Closed streams leave the event loop on its next pass.
        if let Err(e) = self.wake.write(1) {
            tracing::warn!("vsock: waking the event loop: {e}");
        }
    }

    fn desired(&self, fd: RawFd) -> (EventSet, u32) {
        if fd == self.listener.as_raw_fd() {
            let set = if self.listener_paused {
                EventSet::empty()
            } else {
                EventSet::IN
            };
            (set, TOKEN_LISTENER)
        } else if fd == self.timer.as_raw_fd() {
            (EventSet::IN, TOKEN_TIMER)
        } else if fd == self.wake.as_raw_fd() {
            (EventSet::IN, TOKEN_WAKE)
        } else if self.clients.contains_key(&fd) {
            (EventSet::IN, TOKEN_STREAM)
        } else if let Some(c) = self.by_fd.get(&fd).and_then(|k| self.conns.get(k)) {
            (c.interest(), TOKEN_STREAM)
        } else {
            (EventSet::empty(), TOKEN_STREAM)
        }
    }

    /// Brings the event loop's registrations up to date, then closes the
    /// streams that were waiting to leave it.
    pub fn sync_epoll(&mut self, ops: &mut EventOps) {
        for fd in std::mem::take(&mut self.dirty) {
            let (want, token) = self.desired(fd);
            let have = self.registered.get(&fd).copied();
            let result = match have {
                None if want.is_empty() => Ok(()),
                None => ops.add(Events::with_data_raw(fd, token, want)),
                Some(_) if want.is_empty() => ops.remove(Events::empty_raw(fd)),
                Some(h) if h != want => ops.modify(Events::with_data_raw(fd, token, want)),
                Some(_) => Ok(()),
            };
            match result {
                Ok(()) if want.is_empty() => {
                    self.registered.remove(&fd);
                }
                Ok(()) => {
                    self.registered.insert(fd, want);
                }
                Err(e) => tracing::warn!("vsock: updating the event loop for fd {fd}: {e}"),
            }
        }
        self.graveyard.clear();
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn rst_backlog(&self) -> usize {
        self.rst_queue.len()
    }

    #[cfg(test)]
    pub fn registered_count(&self) -> usize {
        self.registered.len()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we bound.
        if let Ok(meta) = std::fs::metadata(&self.uds_path) {
            if (meta.dev(), meta.ino()) == self.uds_id {
                let _ = std::fs::remove_file(&self.uds_path);
            }
        }
    }
}

/// Parses `CONNECT <port>` (the newline already stripped; a trailing `\r` is
/// tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.split_ascii_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let port = words.next()?.parse::<u32>().ok()?;
    words.next().is_none().then_some(port)
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts a client as a non-blocking stream in one system call (the VMM's
/// seccomp filter has no `ioctl(FIONBIO)`, which `set_nonblocking` uses).
fn accept_nonblocking(listener: &UnixListener) -> std::io::Result<UnixStream> {
    // SAFETY: null address pointers are allowed (the peer address is not
    // wanted); the result is checked.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Connects to the unix socket at `path` without ever blocking the event
/// loop: a listener with a full backlog fails with EAGAIN instead.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain integers; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Keep a terminating NUL.
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain system call without pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid, initialised sockaddr_un that outlives the
    // call, and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT  7 "), Some(7));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT x",
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"connect 5",
            b"CONNECT 5 6",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nonblocking_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s_52");
        let e = connect_nonblocking(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        let l = UnixListener::bind(&path).unwrap();
        let mut s = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        std::io::Write::write_all(&mut peer, b"x").unwrap();
        let mut b = [0u8; 1];
        // Non-blocking stream: wait for the byte with a short poll loop.
        let mut tries = 0;
        loop {
            match s.read(&mut b) {
                Ok(1) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => panic!("{other:?}"),
            }
        }
        let long = dir.path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_buffer_too_small_for_data_does_not_hang() {
        use super::super::packet::TYPE_STREAM;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let mut m = Muxer::new(3, &path).unwrap();
        let host = UnixListener::bind(dir.path().join("v.sock_80")).unwrap();
        let req = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 5555,
            dst_port: 80,
            type_: TYPE_STREAM,
            op: Op::Request as u16,
            buf_alloc: 4096,
            ..Header::default()
        };
        m.send_pkt(&req, Op::Request, &[]);
        let (mut server, _) = host.accept().unwrap();
        // Header-only packets fit in a buffer without room for data.
        let resp = m.recv_pkt(&mut []).unwrap();
        assert_eq!((resp.op(), resp.dst_port), (Some(Op::Response), 5555));
        server.write_all(b"data").unwrap();
        let fd = *m.by_fd.keys().next().unwrap();
        m.handle_event(TOKEN_STREAM, fd, EventSet::IN);
        assert!(m.has_rx());
        assert!(m.recv_pkt(&mut []).is_none());
        let mut buf = [0u8; 16];
        let h = m.recv_pkt(&mut buf).unwrap();
        assert_eq!(
            (h.op(), &buf[..h.len as usize]),
            (Some(Op::Rw), &b"data"[..])
        );
        assert_eq!(m.connection_count(), 1);
        m.reset();
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn ports_wrap_and_skip_used_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Muxer::new(3, &dir.path().join("v.sock")).unwrap();
        assert_eq!(m.alloc_port(), FIRST_LOCAL_PORT);
        m.next_port = u32::MAX - 1;
        m.local_ports.insert(FIRST_LOCAL_PORT);
        assert_eq!(m.alloc_port(), u32::MAX - 1);
        assert_eq!(m.alloc_port(), FIRST_LOCAL_PORT + 1);
    }
}
