//! A process's standard streams: pipes or a terminal on the guest side, and the
//! buffers through which the host reads output by offset (see `ReadOutput` in the
//! protocol) and writes input.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::pipe2;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Unacknowledged output kept per stream; beyond it the pipe is not read.
pub const OUTPUT_CAP: usize = 1 << 20;
/// Largest chunk one read returns.
pub const MAX_READ: usize = 1 << 20;
/// Chunk size when the reader names none.
pub const DEFAULT_READ: usize = 64 << 10;

/// Setting up streams failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the process's {what}: {source}")]
pub struct StdioError {
    what: &'static str,
    source: io::Error,
}

fn err(what: &'static str) -> impl FnOnce(nix::Error) -> StdioError {
    move |e| StdioError {
        what,
        source: e.into(),
    }
}

/// A non-blocking descriptor registered with the runtime.
pub type AsyncFdOwned = AsyncFd<OwnedFd>;

/// Makes `fd` non-blocking and close-on-exec and registers it with the runtime.
pub fn nonblocking(fd: OwnedFd) -> io::Result<Arc<AsyncFdOwned>> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same
    // for the AsyncFd's whole life.
    let registered = unsafe { AsyncFd::register(fd) };
    Ok(Arc::new(registered?))
}

/// Reads once, waiting until the descriptor is readable. A terminal whose other side
/// has been closed by every process reads `EIO`: that is end of stream too.
pub async fn read_fd(fd: &AsyncFdOwned, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(io::Error::from))
        {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data`, waiting while the descriptor is full.
pub async fn write_fd(fd: &AsyncFdOwned, mut data: &[u8]) -> io::Result<usize> {
    let total = data.len();
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(total)
}

#[derive(Debug, Default)]
struct OutputState {
    /// Offset of `buf[0]` in the stream.
    start: u64,
    buf: VecDeque<u8>,
    eof: bool,
}

/// One output stream's unacknowledged bytes.
#[derive(Debug, Default)]
pub struct Output {
    state: Mutex<OutputState>,
    changed: Notify,
}

/// What [`Output::read`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of `data`.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Nothing follows `offset + data.len()`.
    pub eof: bool,
}

impl Output {
    /// An empty stream.
    pub fn new() -> Arc<Output> {
        Arc::new(Output::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the end of the stream (for a process that never got its pipe).
    pub fn close(&self) {
        self.lock().eof = true;
        self.changed.notify_waiters();
    }

    /// Whether the whole stream has been read and acknowledged... or at least ended.
    pub fn is_eof(&self) -> bool {
        self.lock().eof
    }

    /// Copies from `fd` into the buffer until end of stream, pausing while the buffer
    /// is full.
    pub async fn pump(self: Arc<Self>, fd: Arc<AsyncFdOwned>) {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let space = loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let used = self.lock().buf.len();
                if used < OUTPUT_CAP {
                    break OUTPUT_CAP - used;
                }
                notified.await;
            };
            let want = space.min(chunk.len());
            match read_fd(&fd, &mut chunk[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.lock().buf.extend(&chunk[..n]);
                    self.changed.notify_waiters();
                }
            }
        }
        self.close();
    }

    /// Acknowledges everything before `offset`, then returns what follows it: at once if
    /// there is something (or the stream ended), else when something arrives or after
    /// `wait`.
    pub async fn read(&self, offset: u64, max: usize, wait: Duration) -> Chunk {
        let max = match max {
            0 => DEFAULT_READ,
            m => m.min(MAX_READ),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let end = s.start + s.buf.len() as u64;
                // Acknowledge.
                let ack = offset.clamp(s.start, end);
                let drop = (ack - s.start) as usize;
                if drop > 0 {
                    s.buf.drain(..drop);
                    s.start = ack;
                    self.changed.notify_waiters();
                }
                let from = offset.max(s.start);
                let available = (end - from.min(end)) as usize;
                if available > 0 || s.eof {
                    let skip = (from - s.start) as usize;
                    let n = available.min(max);
                    let data: Vec<u8> = s.buf.range(skip..skip + n).copied().collect();
                    let eof = s.eof && n == available;
                    return Chunk {
                        offset: from,
                        data,
                        eof,
                    };
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Chunk {
                    offset,
                    data: Vec::new(),
                    eof: false,
                };
            }
        }
    }
}

/// What a child gets for its standard streams.
#[derive(Debug)]
pub enum ChildFds {
    /// Pipes (or /dev/null for stdin), for fds 0, 1 and 2.
    Pipes {
        /// fd 0.
        stdin: OwnedFd,
        /// fd 1.
        stdout: OwnedFd,
        /// fd 2.
        stderr: OwnedFd,
    },
    /// A terminal, which the child opens itself from its container's `/dev/ptmx` (so
    /// that it belongs to the container's devpts and `tty` names it) and whose master
    /// it sends back over `socket`.
    Terminal {
        /// The child's end of the socket pair.
        socket: OwnedFd,
        /// Initial window size (rows, cols).
        size: (u16, u16),
    },
}

/// The guest's end of a process's streams.
#[derive(Debug)]
pub struct ProcessIo {
    /// stdout, or the terminal's output.
    pub stdout: Arc<Output>,
    /// stderr; empty and ended on a terminal.
    pub stderr: Arc<Output>,
    open_stdin: bool,
    stdin: Mutex<Option<Arc<AsyncFdOwned>>>,
    tty: Mutex<Option<Arc<AsyncFdOwned>>>,
    /// The socket the child sends its terminal's master over.
    console: Mutex<Option<OwnedFd>>,
    readers: Mutex<Vec<Arc<AsyncFdOwned>>>,
}

/// Which terminal control a call needs and the process lacks.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// stdin was not kept open, or was closed.
    #[error("stdin is not open")]
    StdinClosed,
    /// Resize of a process without a terminal.
    #[error("the process has no terminal")]
    NoTty,
    /// The write or ioctl failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(PoisonError::into_inner).take()
}

fn get<T: Clone>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

impl ProcessIo {
    /// Makes the streams for a process: a terminal (see [`ChildFds::Terminal`]) of
    /// `size` (rows, cols), or pipes; stdin is writable only when `open_stdin`.
    pub fn new(
        terminal: bool,
        open_stdin: bool,
        size: (u16, u16),
    ) -> Result<(ProcessIo, ChildFds), StdioError> {
        let mut io = ProcessIo {
            stdout: Output::new(),
            stderr: Output::new(),
            open_stdin,
            stdin: Mutex::new(None),
            tty: Mutex::new(None),
            console: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
        };
        if terminal {
            let (ours, theirs) = socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(err("terminal socket"))?;
            io.stderr.close();
            io.console = Mutex::new(Some(ours));
            return Ok((
                io,
                ChildFds::Terminal {
                    socket: theirs,
                    size,
                },
            ));
        }
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(err("stdout pipe"))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(err("stderr pipe"))?;
        let stdin_fd = if open_stdin {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(err("stdin pipe"))?;
            let w = nonblocking(w).map_err(|source| StdioError {
                what: "stdin pipe",
                source,
            })?;
            io.stdin = Mutex::new(Some(w));
            r
        } else {
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|source| StdioError {
                    what: "stdin (/dev/null)",
                    source,
                })?
        };
        let wrap = |fd| {
            nonblocking(fd).map_err(|source| StdioError {
                what: "output pipe",
                source,
            })
        };
        io.readers = Mutex::new(vec![wrap(out_r)?, wrap(err_r)?]);
        let fds = ChildFds::Pipes {
            stdin: stdin_fd,
            stdout: out_w,
            stderr: err_w,
        };
        Ok((io, fds))
    }

    /// For a terminal process: receives the terminal's master from the child (sent
    /// before it reports ready). Does nothing for pipes.
    pub async fn receive_terminal(&self) -> Result<(), StdioError> {
        let Some(socket) = take(&self.console) else {
            return Ok(());
        };
        let failed = |source: io::Error| StdioError {
            what: "terminal",
            source,
        };
        let socket = nonblocking(socket).map_err(failed)?;
        let master = loop {
            let mut guard = socket.readable().await.map_err(failed)?;
            match guard.try_io(|fd| recv_fd(fd.get_ref())) {
                Ok(result) => break result.map_err(failed)?,
                Err(_would_block) => continue,
            }
        };
        let master = nonblocking(master).map_err(failed)?;
        if self.open_stdin {
            *self.stdin.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&master));
        }
        *self.readers.lock().unwrap_or_else(PoisonError::into_inner) = vec![Arc::clone(&master)];
        *self.tty.lock().unwrap_or_else(PoisonError::into_inner) = Some(master);
        Ok(())
    }

    /// Starts copying output into the buffers. Call once, after the child has its ends.
    pub fn start_pumps(&self) {
        let readers =
            std::mem::take(&mut *self.readers.lock().unwrap_or_else(PoisonError::into_inner));
        let outputs = [Arc::clone(&self.stdout), Arc::clone(&self.stderr)];
        for (fd, out) in readers.into_iter().zip(outputs) {
            tokio::spawn(out.pump(fd));
        }
    }

    /// Writes to stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, IoError> {
        let fd = get(&self.stdin).ok_or(IoError::StdinClosed)?;
        Ok(write_fd(&fd, data).await?)
    }

    /// Closes stdin: drops the pipe, or on a terminal sends end-of-file (^D).
    pub async fn close_stdin(&self) -> Result<(), IoError> {
        let fd = take(&self.stdin).ok_or(IoError::StdinClosed)?;
        if get(&self.tty).is_some() {
            write_fd(&fd, &[4]).await?;
        }
        Ok(())
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), IoError> {
        let tty = get(&self.tty).ok_or(IoError::NoTty)?;
        set_winsize(tty.get_ref().as_fd(), rows, cols)?;
        Ok(())
    }
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `fd` over a unix socket (`SCM_RIGHTS`).
pub fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"t")];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`].
fn recv_fd(socket: &OwnedFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&raw) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us; nothing
                // else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the process exited before sending its terminal",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn output_is_read_by_offset_and_acknowledged() {
        let out = Output::new();
        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        tokio::spawn(Arc::clone(&out).pump(nonblocking(r).unwrap()));
        nix::unistd::write(&w, b"hello world").unwrap();
        let c = out.read(0, 5, Duration::from_secs(5)).await;
        assert_eq!((c.offset, &c.data[..], c.eof), (0, &b"hello"[..], false));
        // Re-reading from 0 is still possible: nothing was acknowledged.
        let c = out.read(0, 0, Duration::from_secs(5)).await;
        assert_eq!(&c.data[..], b"hello world");
        // Reading from 6 acknowledges "hello ".
        let c = out.read(6, 0, Duration::from_secs(5)).await;
        assert_eq!((c.offset, &c.data[..]), (6, &b"world"[..]));
        let c = out.read(0, 0, Duration::from_secs(5)).await;
        assert_eq!(c.offset, 6, "acknowledged bytes are gone");
        drop(w);
        let c = out.read(11, 0, Duration::from_secs(5)).await;
        assert!(c.data.is_empty() && c.eof);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_without_data_times_out_empty() {
        let out = Output::new();
        let c = out.read(0, 0, Duration::from_millis(20)).await;
        assert!(c.data.is_empty() && !c.eof);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_buffer_stops_the_pump_until_acknowledged() {
        let out = Output::new();
        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        tokio::spawn(Arc::clone(&out).pump(nonblocking(r).unwrap()));
        let w = nonblocking(w).unwrap();
        let total = OUTPUT_CAP * 2;
        let writer = tokio::spawn(async move {
            write_fd(&w, &vec![7u8; total]).await.unwrap();
        });
        let mut offset = 0u64;
        while offset < total as u64 {
            let c = out.read(offset, 0, Duration::from_secs(5)).await;
            assert!(out.lock().buf.len() <= OUTPUT_CAP);
            offset = c.offset + c.data.len() as u64;
        }
        writer.await.unwrap();
        assert_eq!(offset, total as u64);
    }
}
