//! The offloads a virtio-net card offers, what they make of the tap, and the check of
//! the `virtio_net_hdr_v1` in front of each frame the guest sends (virtio 1.2, 5.1.6).
//!
//! The header goes to the tap as it is, so the host kernel acts on it (checksums,
//! segmentation). The tap checks it too, but a header is checked here first against
//! what the guest negotiated: a guest that asks for an offload it did not accept, or
//! points a checksum outside its frame, has its frame dropped and counted.

use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VNET_HDR_LEN};

/// The device checks and completes partial checksums of frames it sends.
pub const F_CSUM: u64 = 1 << 0;
/// The driver takes frames with partial checksums.
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// The device has a MAC address in its configuration.
pub const F_MAC: u64 = 1 << 5;
/// The driver takes TCPv4 segments larger than the MTU.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// The driver takes TCPv6 segments larger than the MTU.
pub const F_GUEST_TSO6: u64 = 1 << 8;
/// The driver takes TSO segments with ECN.
pub const F_GUEST_ECN: u64 = 1 << 9;
/// The device segments TCPv4 for the driver.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// The device segments TCPv6 for the driver.
pub const F_HOST_TSO6: u64 = 1 << 12;
/// The device segments TSO frames with ECN.
pub const F_HOST_ECN: u64 = 1 << 13;
/// The device fragments UDP for the driver.
pub const F_HOST_UFO: u64 = 1 << 14;
/// The driver's receive buffers can be merged for one frame.
pub const F_MRG_RXBUF: u64 = 1 << 15;

/// Offloads offered where the tap takes them. Not `GUEST_UFO`: tun accepts
/// `TUN_F_UFO` but never hands out UFO frames (Linux dropped UFO in 4.14), so it would
/// promise nothing. `HOST_UFO` is offered since the tap still takes UFO frames from
/// older guests.
pub const OFFLOADS: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN
    | F_HOST_UFO;

/// Where `num_buffers` sits in the header.
pub const NUM_BUFFERS: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// The tap offloads (`TUNSETOFFLOAD`) for the features the guest accepted: what the
/// tap may hand over is what the guest takes. tun needs checksum offload for TSO.
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if acked & F_GUEST_TSO4 != 0 {
        flags |= TUN_F_TSO4;
    }
    if acked & F_GUEST_TSO6 != 0 {
        flags |= TUN_F_TSO6;
    }
    if acked & F_GUEST_ECN != 0 && flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
        flags |= TUN_F_TSO_ECN;
    }
    flags
}

/// Why a guest frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    /// Flags other than NEEDS_CSUM, or NEEDS_CSUM without `CSUM`.
    #[error("flags {0:#x} not allowed")]
    Flags(u8),
    /// A segmentation type the guest did not negotiate (or none defined).
    #[error("GSO type {0:#x} not negotiated")]
    GsoType(u8),
    /// Segmentation without a segment size or without a partial checksum.
    #[error("GSO without a segment size and NEEDS_CSUM")]
    Gso,
    /// The checksum start and offset point past the frame.
    #[error("checksum at {start}+{offset} outside a {len}-byte frame")]
    Csum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame's length without the header.
        len: usize,
    },
}

/// Checks the header of a frame of `frame_len` bytes (header included) the guest
/// sends, against the features it accepted (`acked`).
pub fn check_tx(hdr: &[u8; VNET_HDR_LEN], frame_len: usize, acked: u64) -> Result<(), BadHeader> {
    let flags = hdr[0];
    let gso = hdr[1];
    let le = |i: usize| u16::from_le_bytes([hdr[i], hdr[i + 1]]);
    let (gso_size, csum_start, csum_offset) = (le(4), le(6), le(8));
    let needs_csum = flags & F_NEEDS_CSUM != 0;
    if flags & !F_NEEDS_CSUM != 0 || (needs_csum && acked & F_CSUM == 0) {
        return Err(BadHeader::Flags(flags));
    }
    let kind = gso & !GSO_ECN;
    let needed = match kind {
        GSO_NONE => 0,
        GSO_TCPV4 => F_HOST_TSO4,
        GSO_TCPV6 => F_HOST_TSO6,
        GSO_UDP => F_HOST_UFO,
        _ => return Err(BadHeader::GsoType(gso)),
    };
    let ecn_ok = gso & GSO_ECN == 0 || (kind != GSO_NONE && acked & F_HOST_ECN != 0);
    if acked & needed != needed || !ecn_ok {
        return Err(BadHeader::GsoType(gso));
    }
    if kind != GSO_NONE && (gso_size == 0 || !needs_csum) {
        return Err(BadHeader::Gso);
    }
    let len = frame_len.saturating_sub(VNET_HDR_LEN);
    if needs_csum && usize::from(csum_start) + usize::from(csum_offset) + 2 > len {
        return Err(BadHeader::Csum {
            start: csum_start,
            offset: csum_offset,
            len,
        });
    }
    Ok(())
}

/// A header with these fields, for tests.
#[cfg(test)]
pub fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tap_hands_over_only_what_the_guest_takes() {
        assert_eq!(tap_offloads(0), 0);
        // TSO without checksum offload is no TSO.
        assert_eq!(tap_offloads(F_GUEST_TSO4 | F_GUEST_TSO6), 0);
        assert_eq!(tap_offloads(F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_ECN),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN
        );
        assert_eq!(
            tap_offloads(OFFLOADS),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
        assert_eq!(tap_offloads(F_GUEST_CSUM | F_GUEST_ECN), TUN_F_CSUM);
    }

    #[test]
    fn plain_frames_pass_without_any_offload() {
        assert_eq!(check_tx(&[0; VNET_HDR_LEN], 60, 0), Ok(()));
        // A frame shorter than its header is the reader's to refuse, not a panic here.
        assert_eq!(check_tx(&[0; VNET_HDR_LEN], 0, 0), Ok(()));
    }

    #[test]
    fn offloads_need_their_features() {
        let tso4 = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16);
        assert_eq!(check_tx(&tso4, 9000, OFFLOADS), Ok(()));
        assert_eq!(
            check_tx(&tso4, 9000, OFFLOADS & !F_HOST_TSO4),
            Err(BadHeader::GsoType(GSO_TCPV4))
        );
        assert_eq!(
            check_tx(&tso4, 9000, OFFLOADS & !F_CSUM),
            Err(BadHeader::Flags(F_NEEDS_CSUM))
        );
        let tso6 = hdr(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 1428, 54, 16);
        assert_eq!(check_tx(&tso6, 9000, OFFLOADS), Ok(()));
        assert_eq!(
            check_tx(&tso6, 9000, OFFLOADS & !F_HOST_ECN),
            Err(BadHeader::GsoType(GSO_TCPV6 | GSO_ECN))
        );
        let ufo = hdr(F_NEEDS_CSUM, GSO_UDP, 1472, 34, 6);
        assert_eq!(check_tx(&ufo, 9000, OFFLOADS), Ok(()));
        assert_eq!(
            check_tx(&ufo, 9000, F_CSUM),
            Err(BadHeader::GsoType(GSO_UDP))
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        // Unknown or receive-only flags (DATA_VALID, RSC_INFO).
        for flags in [2, 4, 0x80] {
            assert_eq!(
                check_tx(&hdr(flags, 0, 0, 0, 0), 100, OFFLOADS),
                Err(BadHeader::Flags(flags))
            );
        }
        // Undefined GSO types, ECN on nothing.
        for gso in [2, 5, 0x7f, GSO_ECN] {
            assert_eq!(
                check_tx(&hdr(F_NEEDS_CSUM, gso, 1448, 34, 16), 9000, OFFLOADS),
                Err(BadHeader::GsoType(gso))
            );
        }
        // Segmentation without a size or without a partial checksum.
        assert_eq!(
            check_tx(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16), 9000, OFFLOADS),
            Err(BadHeader::Gso)
        );
        assert_eq!(
            check_tx(&hdr(0, GSO_TCPV4, 1448, 0, 0), 9000, OFFLOADS),
            Err(BadHeader::Gso)
        );
        // The checksum's two bytes must lie in the frame.
        assert_eq!(
            check_tx(
                &hdr(F_NEEDS_CSUM, 0, 0, 34, 16),
                VNET_HDR_LEN + 52,
                OFFLOADS
            ),
            Ok(())
        );
        assert_eq!(
            check_tx(
                &hdr(F_NEEDS_CSUM, 0, 0, 34, 16),
                VNET_HDR_LEN + 51,
                OFFLOADS
            ),
            Err(BadHeader::Csum {
                start: 34,
                offset: 16,
                len: 51
            })
        );
        assert!(check_tx(
            &hdr(F_NEEDS_CSUM, 0, 0, u16::MAX, u16::MAX),
            70000,
            OFFLOADS
        )
        .is_err());
    }
}
