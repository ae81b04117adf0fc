//! SPDY/3.1 frames: the subset Kubernetes clients send, decoded incrementally from a
//! byte buffer and encoded into one. Header blocks stay compressed here: their zlib
//! context spans the whole connection, so the connection (de)compresses them in wire
//! order.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of every frame header.
pub const HEADER_LEN: usize = 8;
/// Largest control frame body accepted (SYN_STREAM with its compressed header block).
pub const MAX_CONTROL_LEN: usize = 64 << 10;
/// Largest DATA payload accepted. Go clients write at most 32 KiB per frame; the
/// protocol's 16 MiB limit would let one frame pin that much memory.
pub const MAX_DATA_LEN: usize = 1 << 20;
/// Largest DATA payload sent: keeps one busy stream from delaying the others.
pub const MAX_SEND_DATA: usize = 32 << 10;

/// FIN flag (control and data frames).
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status PROTOCOL_ERROR.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status REFUSED_STREAM.
pub const RST_REFUSED_STREAM: u32 = 3;
/// RST_STREAM status CANCEL.
pub const RST_CANCEL: u32 = 5;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// A malformed or oversized frame: the connection cannot continue after one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame longer than this server accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// The limit for its kind.
        max: usize,
    },
    /// A control frame shorter than its fixed fields.
    #[error("control frame type {kind} too short ({len} bytes)")]
    TooShort {
        /// Frame type.
        kind: u16,
        /// Its length.
        len: usize,
    },
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A peer opens a stream.
    SynStream {
        /// Stream id (odd for a client).
        stream_id: u32,
        /// Associated stream id (unused by Kubernetes).
        associated_id: u32,
        /// Priority, 0..=7.
        priority: u8,
        /// Flags (FIN, UNIDIRECTIONAL).
        flags: u8,
        /// Compressed header block.
        headers: Bytes,
    },
    /// Answer to SYN_STREAM.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Compressed header block.
        headers: Bytes,
    },
    /// Abort a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// Connection settings (ignored: no flow control, see the connection module).
    Settings,
    /// Liveness probe, echoed when the peer sent it.
    Ping {
        /// Ping id.
        id: u32,
    },
    /// End of the connection.
    GoAway {
        /// Last stream the sender processed.
        last_good_stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// More headers for a stream (ignored, but decompressed to keep the zlib context).
    Headers {
        /// Stream id.
        stream_id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Compressed header block.
        headers: Bytes,
    },
    /// Flow control (ignored).
    WindowUpdate {
        /// Stream id.
        stream_id: u32,
        /// Window increase.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// Stream id.
        stream_id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A control frame type this server does not know (skipped).
    Unknown {
        /// Frame type.
        kind: u16,
    },
}

/// Decodes one frame from the front of `buf`, or `None` when more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags = buf[4];
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    let control = word & 0x8000_0000 != 0;
    let max = if control {
        MAX_CONTROL_LEN
    } else {
        MAX_DATA_LEN
    };
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    if control {
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
    }
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let mut body = buf.split_to(len).freeze();
    if !control {
        return Ok(Some(Frame::Data {
            stream_id: word & 0x7fff_ffff,
            flags,
            data: body,
        }));
    }
    let kind = (word & 0xffff) as u16;
    let need = match kind {
        SYN_STREAM => 10,
        SYN_REPLY | HEADERS | PING => 4,
        RST_STREAM | GOAWAY | WINDOW_UPDATE => 8,
        _ => 0,
    };
    if len < need {
        return Err(FrameError::TooShort { kind, len });
    }
    let frame = match kind {
        SYN_STREAM => {
            let stream_id = body.get_u32() & 0x7fff_ffff;
            let associated_id = body.get_u32() & 0x7fff_ffff;
            let priority = body.get_u8() >> 5;
            let _slot = body.get_u8();
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers: body,
            }
        }
        SYN_REPLY => Frame::SynReply {
            stream_id: body.get_u32() & 0x7fff_ffff,
            flags,
            headers: body,
        },
        HEADERS => Frame::Headers {
            stream_id: body.get_u32() & 0x7fff_ffff,
            flags,
            headers: body,
        },
        RST_STREAM => Frame::RstStream {
            stream_id: body.get_u32() & 0x7fff_ffff,
            status: body.get_u32(),
        },
        SETTINGS => Frame::Settings,
        PING => Frame::Ping { id: body.get_u32() },
        GOAWAY => Frame::GoAway {
            last_good_stream_id: body.get_u32() & 0x7fff_ffff,
            status: body.get_u32(),
        },
        WINDOW_UPDATE => Frame::WindowUpdate {
            stream_id: body.get_u32() & 0x7fff_ffff,
            delta: body.get_u32() & 0x7fff_ffff,
        },
        kind => Frame::Unknown { kind },
    };
    Ok(Some(frame))
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u32(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind));
    out.put_u32((u32::from(flags) << 24) | (len as u32 & 0x00ff_ffff));
}

impl Frame {
    /// Appends the frame's wire form to `out`. Bodies longer than the 24-bit length
    /// field are a bug of the caller (headers and data are chunked before).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                control(out, SYN_STREAM, *flags, 10 + headers.len());
                out.put_u32(*stream_id);
                out.put_u32(*associated_id);
                out.put_u8(priority << 5);
                out.put_u8(0);
                out.put_slice(headers);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                control(out, SYN_REPLY, *flags, 4 + headers.len());
                out.put_u32(*stream_id);
                out.put_slice(headers);
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                control(out, HEADERS, *flags, 4 + headers.len());
                out.put_u32(*stream_id);
                out.put_slice(headers);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, RST_STREAM, 0, 8);
                out.put_u32(*stream_id);
                out.put_u32(*status);
            }
            Frame::Settings => {
                control(out, SETTINGS, 0, 4);
                out.put_u32(0);
            }
            Frame::Ping { id } => {
                control(out, PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control(out, GOAWAY, 0, 8);
                out.put_u32(*last_good_stream_id);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, WINDOW_UPDATE, 0, 8);
                out.put_u32(*stream_id);
                out.put_u32(*delta);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | (data.len() as u32 & 0x00ff_ffff));
                out.put_slice(data);
            }
            Frame::Unknown { kind } => control(out, *kind, 0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        let wire = buf.clone();
        // Byte by byte: a partial frame is never consumed.
        let mut partial = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            partial.put_u8(*b);
            let got = decode(&mut partial).unwrap();
            if i + 1 < wire.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(f.clone()));
            }
        }
        assert!(partial.is_empty());
        assert_eq!(decode(&mut buf).unwrap(), Some(f));
    }

    #[test]
    fn round_trips() {
        round_trip(Frame::SynStream {
            stream_id: 5,
            associated_id: 0,
            priority: 7,
            flags: 0x02,
            headers: Bytes::from_static(b"abc"),
        });
        round_trip(Frame::SynReply {
            stream_id: 5,
            flags: 0,
            headers: Bytes::from_static(b"x"),
        });
        round_trip(Frame::Headers {
            stream_id: 9,
            flags: FLAG_FIN,
            headers: Bytes::new(),
        });
        round_trip(Frame::RstStream {
            stream_id: 3,
            status: RST_CANCEL,
        });
        round_trip(Frame::Ping { id: 1 });
        round_trip(Frame::GoAway {
            last_good_stream_id: 11,
            status: 0,
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 1,
            delta: 1000,
        });
        round_trip(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"hello"),
        });
        round_trip(Frame::Settings);
    }

    #[test]
    fn rejects_bad_frames() {
        let mut b = BytesMut::from(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut b), Err(FrameError::Version(2)));
        let mut b = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0, 0x01, 0, 1][..]);
        assert!(matches!(decode(&mut b), Err(FrameError::TooLong { .. })));
        let mut b = BytesMut::from(&[0, 0, 0, 1, 0, 0x7f, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut b), Err(FrameError::TooLong { .. })));
        let mut b = BytesMut::from(&[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(decode(&mut b), Err(FrameError::TooShort { .. })));
        // An unknown control type is skipped, not an error.
        let mut b = BytesMut::from(&[0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 2, 1, 2][..]);
        assert_eq!(decode(&mut b), Ok(Some(Frame::Unknown { kind: 10 })));
    }
}
