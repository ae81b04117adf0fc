//! Minimal blocking `AF_VSOCK` stream sockets.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// `VMADDR_CID_ANY`: listen on whatever CID the guest has.
pub const CID_ANY: u32 = libc::VMADDR_CID_ANY;
/// `VMADDR_CID_HOST`: the host, as seen from the guest.
pub const CID_HOST: u32 = libc::VMADDR_CID_HOST;

fn stream_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A listening vsock stream socket.
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
}

impl VsockListener {
    /// Binds `cid:port` and listens.
    pub fn bind(cid: u32, port: u32) -> io::Result<Self> {
        let fd = stream_socket()?;
        bind(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
        listen(&fd, Backlog::new(128)?)?;
        Ok(Self { fd })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<VsockStream> {
        let raw = accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(VsockStream::from(fd))
    }
}

/// A connected vsock stream socket.
#[derive(Debug)]
pub struct VsockStream {
    // A File reads and writes with read(2)/write(2), which is all a stream socket needs.
    file: File,
}

impl VsockStream {
    /// Connects to `cid:port`.
    pub fn connect(cid: u32, port: u32) -> io::Result<Self> {
        let fd = stream_socket()?;
        connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
        Ok(Self::from(fd))
    }
}

impl From<OwnedFd> for VsockStream {
    fn from(fd: OwnedFd) -> Self {
        Self {
            file: File::from(fd),
        }
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
