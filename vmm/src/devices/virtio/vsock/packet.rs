//! The virtio-vsock packet header (virtio 1.2, 5.10.6): 44 little-endian bytes
//! in front of every packet, followed by `len` bytes of payload for `OP_RW`.
//!
//! Everything a guest puts in a TX buffer is untrusted: [`read_packet`] checks
//! the header against the buffer it came in and against [`MAX_PKT_DATA`] before
//! a single payload byte is copied.

use std::io::Read;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Largest payload accepted from, or sent to, the guest in one packet. Linux
/// never sends more (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// The host's CID, as seen from the guest.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type we speak.
pub const TYPE_STREAM: u16 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused, aborted or closed).
    Rst = 3,
    /// Half or full close; `flags` says which directions.
    Shutdown = 4,
    /// Stream data.
    Rw = 5,
    /// Unsolicited or requested credit information.
    CreditUpdate = 6,
    /// Asks the peer for a credit update.
    CreditRequest = 7,
}

impl TryFrom<u16> for Op {
    type Error = u16;
    fn try_from(v: u16) -> Result<Self, u16> {
        Ok(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            other => return Err(other),
        })
    }
}

/// A decoded `virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Sender CID.
    pub src_cid: u64,
    /// Receiver CID.
    pub dst_cid: u64,
    /// Sender port.
    pub src_port: u32,
    /// Receiver port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (`TYPE_STREAM`).
    pub type_: u16,
    /// Operation (raw; see [`Op`]).
    pub op: u16,
    /// Operation flags (shutdown directions).
    pub flags: u32,
    /// Receive buffer space the sender allocated for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from that buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the wire format (no validation).
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the wire format.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if it is one we know.
    pub fn op(&self) -> Option<Op> {
        Op::try_from(self.op).ok()
    }

    /// A header-only RST answering `to` (addresses swapped).
    pub fn rst_reply(to: &Header) -> Header {
        Header {
            src_cid: to.dst_cid,
            dst_cid: to.src_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Header::default()
        }
    }
}

/// Why a guest TX packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The buffer is shorter than a header.
    #[error("buffer of {0} bytes is too short for a packet header")]
    Truncated(usize),
    /// The header was read; its content is invalid.
    #[error("{reason}")]
    Invalid {
        /// The offending header, so the sender can be told (RST).
        hdr: Header,
        /// What is wrong with it.
        reason: Invalid,
    },
}

/// What is wrong with a well-framed header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// Not a stream packet.
    #[error("unsupported socket type {0}")]
    Type(u16),
    /// Not an operation we know.
    #[error("unknown operation {0}")]
    Op(u16),
    /// `len` exceeds [`MAX_PKT_DATA`].
    #[error("payload of {0} bytes exceeds the 64 KiB maximum")]
    TooLarge(u32),
    /// `len` exceeds what the buffer holds after the header.
    #[error("payload of {len} bytes but only {available} bytes in the buffer")]
    BeyondBuffer {
        /// Claimed payload length.
        len: u32,
        /// Bytes actually present.
        available: usize,
    },
    /// A control operation carrying a payload.
    #[error("payload on a control packet")]
    PayloadOnControl,
}

/// Reads one TX packet from `r`, which holds `available` bytes: the header is
/// returned and its payload (if any) copied to `data[..hdr.len]`. `data` must
/// hold at least [`MAX_PKT_DATA`] bytes.
pub fn read_packet(
    r: &mut impl Read,
    available: usize,
    data: &mut [u8],
) -> Result<(Header, Op), PacketError> {
    if available < HDR_LEN {
        return Err(PacketError::Truncated(available));
    }
    let mut raw = [0u8; HDR_LEN];
    r.read_exact(&mut raw)
        .map_err(|_| PacketError::Truncated(available))?;
    let hdr = Header::from_bytes(&raw);
    let invalid = |reason| PacketError::Invalid { hdr, reason };
    if hdr.type_ != TYPE_STREAM {
        return Err(invalid(Invalid::Type(hdr.type_)));
    }
    let op = hdr.op().ok_or(invalid(Invalid::Op(hdr.op)))?;
    let len = hdr.len as usize;
    if len > MAX_PKT_DATA || len > data.len() {
        return Err(invalid(Invalid::TooLarge(hdr.len)));
    }
    if len > available - HDR_LEN {
        return Err(invalid(Invalid::BeyondBuffer {
            len: hdr.len,
            available: available - HDR_LEN,
        }));
    }
    if len > 0 && op != Op::Rw {
        return Err(invalid(Invalid::PayloadOnControl));
    }
    r.read_exact(&mut data[..len]).map_err(|_| {
        invalid(Invalid::BeyondBuffer {
            len: hdr.len,
            available: available - HDR_LEN,
        })
    })?;
    Ok((hdr, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    fn wire(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn parse(bytes: &[u8]) -> Result<(Header, Op, Vec<u8>), PacketError> {
        let mut data = vec![0u8; MAX_PKT_DATA];
        let (h, op) = read_packet(&mut &bytes[..], bytes.len(), &mut data)?;
        Ok((h, op, data[..h.len as usize].to_vec()))
    }

    #[test]
    fn header_round_trips_in_little_endian() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 9,
            len: 5,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x1000,
            fwd_cnt: 0xffff_ffff,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(b[30], 5);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn good_packets_parse() {
        let (h, op, data) = parse(&wire(&hdr(5, 3), b"abc")).unwrap();
        assert_eq!((op, h.fwd_cnt, data.as_slice()), (Op::Rw, 7, &b"abc"[..]));
        let (_, op, data) = parse(&wire(&hdr(1, 0), b"")).unwrap();
        assert_eq!((op, data.len()), (Op::Request, 0));
        // Trailing bytes beyond `len` are ignored.
        let (_, _, data) = parse(&wire(&hdr(5, 2), b"abcdef")).unwrap();
        assert_eq!(data, b"ab");
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(parse(&[0u8; 10]).unwrap_err(), PacketError::Truncated(10));
        assert_eq!(parse(&[]).unwrap_err(), PacketError::Truncated(0));
        let reason = |r: Result<_, PacketError>| match r {
            Err(PacketError::Invalid { reason, .. }) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let mut h = hdr(5, 0);
        h.type_ = 2;
        assert_eq!(reason(parse(&wire(&h, b""))), Invalid::Type(2));
        assert_eq!(reason(parse(&wire(&hdr(0, 0), b""))), Invalid::Op(0));
        assert_eq!(reason(parse(&wire(&hdr(8, 0), b""))), Invalid::Op(8));
        assert_eq!(
            reason(parse(&wire(&hdr(5, u32::MAX), b""))),
            Invalid::TooLarge(u32::MAX)
        );
        assert_eq!(
            reason(parse(&wire(&hdr(5, 64 * 1024 + 1), b""))),
            Invalid::TooLarge(64 * 1024 + 1)
        );
        assert_eq!(
            reason(parse(&wire(&hdr(5, 10), b"abc"))),
            Invalid::BeyondBuffer {
                len: 10,
                available: 3
            }
        );
        assert_eq!(
            reason(parse(&wire(&hdr(1, 3), b"abc"))),
            Invalid::PayloadOnControl
        );
    }

    #[test]
    fn a_short_reader_is_an_error_not_a_panic() {
        // The reader holds fewer bytes than the caller claimed.
        let bytes = wire(&hdr(5, 8), b"abcd");
        let mut data = vec![0u8; MAX_PKT_DATA];
        let r = read_packet(&mut &bytes[..], bytes.len() + 4, &mut data);
        assert!(matches!(r, Err(PacketError::Invalid { .. })));
        let r = read_packet(&mut &bytes[..20], 44, &mut data);
        assert_eq!(r.unwrap_err(), PacketError::Truncated(44));
    }

    #[test]
    fn rst_reply_swaps_addresses() {
        let r = Header::rst_reply(&hdr(1, 0));
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.op(), r.len),
            (HOST_CID, 3, 52, 1000, Some(Op::Rst), 0)
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Arbitrary TX buffers from the guest: parsing never panics, and an accepted
    //! packet's payload always fits what the guest actually provided.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn arbitrary_buffers_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..512),
            stream in any::<bool>(),
            op in 0u16..9,
            claimed_extra in 0usize..64,
        ) {
            if bytes.len() >= HDR_LEN && stream {
                bytes[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
                bytes[30..32].copy_from_slice(&op.to_le_bytes());
            }
            let mut data = vec![0u8; MAX_PKT_DATA];
            // The guest's descriptors may claim more than they hold.
            let available = bytes.len() + claimed_extra;
            if let Ok((hdr, _op)) = read_packet(&mut bytes.as_slice(), available, &mut data) {
                prop_assert!(HDR_LEN + hdr.len as usize <= bytes.len());
            }
        }
    }
}
