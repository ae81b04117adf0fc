//! A tap device opened with a virtio-net header, so frames pass between the
//! guest's queues and the host kernel unchanged, offloads included.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

// From <linux/if_tun.h>; the nix crate does not wrap the tun ioctls.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`: which offloads the tap may hand to its reader.
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUNSETOFFLOAD` flags: what the tap may hand to its reader (partial checksums,
/// TCP segments larger than the MTU, with ECN).
pub const TUN_F_CSUM: u32 = 0x01;
/// TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;
/// TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// Size of `virtio_net_hdr_v1`, the header in front of every frame.
pub const VNET_HDR_LEN: usize = 12;

/// Errors opening a tap device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Name too long for an interface.
    #[error("tap name {0:?} is longer than 15 bytes")]
    Name(String),
    /// /dev/net/tun cannot be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(std::io::Error),
    /// An ioctl failed.
    #[error("{0} on tap {1:?}: {2}")]
    Ioctl(&'static str, String, std::io::Error),
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads: bool,
}

impl Tap {
    /// Attaches to (or creates) tap `name`, non-blocking, with vnet headers and
    /// no offloads yet (the guest's features choose them: [`Tap::set_offloads`]).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.len() >= libc::IFNAMSIZ || name.is_empty() {
            return Err(TapError::Name(name.to_owned()));
        }
        // SAFETY: the path is a NUL-terminated literal; the fd is checked below.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let ioctl = |what, req: libc::c_ulong, arg: *const libc::c_void| {
            // SAFETY: each request is given an argument of the type the kernel expects
            // (an ifreq, or a pointer to an int) that lives across the call.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), req, arg) };
            if r < 0 {
                Err(TapError::Ioctl(
                    what,
                    name.to_owned(),
                    std::io::Error::last_os_error(),
                ))
            } else {
                Ok(())
            }
        };
        ioctl("TUNSETIFF", TUNSETIFF, (&raw const req).cast())?;
        let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        ioctl(
            "TUNSETVNETHDRSZ",
            TUNSETVNETHDRSZ,
            (&raw const hdr_len).cast(),
        )?;
        let mut tap = Tap {
            file,
            name: name.to_owned(),
            offloads: false,
        };
        // A kernel that refuses them gets a card without offloads.
        let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        tap.offloads = tap.set_offloads(all).is_ok();
        tap.set_offloads(0)
            .map_err(|e| TapError::Ioctl("TUNSETOFFLOAD", name.to_owned(), e))?;
        Ok(tap)
    }

    /// Whether the tap takes checksum and TCP segmentation offloads.
    pub fn supports_offloads(&self) -> bool {
        self.offloads
    }

    /// Sets what the tap may hand over (`TUN_F_*`).
    pub fn set_offloads(&mut self, flags: u32) -> std::io::Result<()> {
        // TUNSETOFFLOAD takes its flags by value.
        // SAFETY: plain integer argument on a tap descriptor we own.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its vnet header); `WouldBlock` when none is queued.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (with its vnet header).
    pub fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
