//! The vsock server: accepts host connections and answers [`crate::protocol`] requests.
//!
//! Each connection is served on its own thread by [`Server::handle_connection`], which
//! works on any `Read + Write` stream, so it is tested on the host over unix sockets. What
//! only a guest can do (connecting to the host over vsock, powering off) sits behind
//! [`Platform`]; [`GuestPlatform`] is the real one.

pub mod echo;
pub mod run;
pub mod vsock;

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{shutdown, Shutdown};

use crate::console;
use crate::pid1::{self, ChildRegistry};
use crate::protocol::{self, ProtocolError, Request, Response, MAX_REQUEST_LINE};

pub use run::DEFAULT_PATH;
use vsock::{VsockListener, VsockStream};

/// The vsock port vmlet-init listens on.
pub const VSOCK_PORT: u32 = 1024;

/// The vsock port whose every connection powers the guest off: how the VMM asks
/// for a graceful shutdown without speaking the request protocol.
pub const POWER_PORT: u32 = 1023;

/// The version reported by `ping`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest wait between two attempts to listen on vsock.
const MAX_LISTEN_RETRY: Duration = Duration::from_secs(30);

/// How long `poweroff` waits for the client to close the connection, which proves that
/// the response arrived, before it resets the machine anyway.
const POWER_OFF_LINGER: u16 = 2000;

/// What the server needs from the machine it runs on.
pub trait Platform: Send + Sync + 'static {
    /// A connection to the host.
    type HostStream: Read + Write;

    /// Connects to the host on vsock port `port`.
    fn connect_host(&self, port: u32) -> io::Result<Self::HostStream>;

    /// Powers the machine off; returns only on failure.
    fn power_off(&self) -> io::Error;
}

/// The real guest: vsock to CID 2, power off through [`pid1::power_off`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestPlatform;

impl Platform for GuestPlatform {
    type HostStream = VsockStream;

    fn connect_host(&self, port: u32) -> io::Result<VsockStream> {
        VsockStream::connect(vsock::CID_HOST, port)
    }

    fn power_off(&self) -> io::Error {
        io::Error::from(pid1::power_off())
    }
}

/// Answers requests; shared by all connection threads.
#[derive(Debug)]
pub struct Server<P> {
    platform: P,
    children: Arc<ChildRegistry>,
}

/// What the connection loop does after a request.
enum Next {
    /// Read the next request.
    Continue,
    /// Switch the connection to raw echo mode.
    Echo,
    /// Deliver the response, then power off.
    PowerOff,
}

impl<P: Platform> Server<P> {
    /// A server on `platform` that starts processes through `children`.
    pub fn new(platform: P, children: Arc<ChildRegistry>) -> Self {
        Self { platform, children }
    }

    /// Serves one connection until the client closes it, a request ends it (`echo`,
    /// `poweroff`), or an I/O error occurs on it.
    pub fn handle_connection<S: Read + Write + AsFd>(&self, stream: S) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(64 << 10, stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            let request = match read_line(&mut reader, &mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => protocol::parse_request(&line),
                Err(e) if e.kind() == ErrorKind::InvalidData => Err(ProtocolError::TooLong),
                Err(e) => return Err(e),
            };
            let next = match request {
                Ok(request) => self.handle(request, &mut reader)?,
                Err(e) => {
                    respond(&mut reader, &error_response(e))?;
                    Next::Continue
                }
            };
            match next {
                Next::Continue => {}
                Next::Echo => return echo::echo_rest(reader).map(drop),
                Next::PowerOff => {
                    linger(reader.get_ref());
                    let e = self.platform.power_off();
                    console::error(format_args!("power off failed: {e}"));
                    return Ok(());
                }
            }
        }
    }

    fn handle<S: Read + Write>(
        &self,
        request: Request,
        reader: &mut BufReader<S>,
    ) -> io::Result<Next> {
        match request {
            Request::Ping => respond(reader, &Response::version(VERSION))?,
            Request::Run(req) => {
                let response = match run::run(&self.children, &req) {
                    Ok(out) => Response::run(out),
                    Err(e) => error_response(e),
                };
                respond(reader, &response)?;
            }
            Request::Echo => {
                respond(reader, &Response::ok())?;
                return Ok(Next::Echo);
            }
            Request::ConnectEcho { port } => {
                let response = match self.platform.connect_host(port) {
                    Ok(mut host) => match echo::echo(&mut host) {
                        Ok(bytes) => Response::bytes(bytes),
                        Err(e) => error_response(format_args!("echo on host port {port}: {e}")),
                    },
                    Err(e) => {
                        error_response(format_args!("cannot connect to host port {port}: {e}"))
                    }
                };
                respond(reader, &response)?;
            }
            Request::Poweroff => {
                // Power off even if the client is gone: that is what it asked for.
                if let Err(e) = respond(reader, &Response::ok()) {
                    console::error(format_args!("poweroff: cannot answer: {e}"));
                }
                return Ok(Next::PowerOff);
            }
        }
        Ok(Next::Continue)
    }
}

/// Reads one request line, newline included, into `line`; returns its length (0 at EOF).
/// A line longer than [`MAX_REQUEST_LINE`] is skipped up to its newline and reported as
/// [`ErrorKind::InvalidData`].
fn read_line<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<usize> {
    let n = reader
        .by_ref()
        .take(MAX_REQUEST_LINE as u64)
        .read_until(b'\n', line)?;
    if n == MAX_REQUEST_LINE && line.last() != Some(&b'\n') {
        reader.skip_until(b'\n')?;
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            "request line too long",
        ));
    }
    Ok(n)
}

/// Gives a response time to reach the client before the machine goes away: a write only
/// queues the bytes, and a reset drops whatever the virtio-vsock device has not taken yet.
/// Shuts down our write side (queued behind the response), then waits up to
/// [`POWER_OFF_LINGER`] ms for the client to react (close, or send anything).
fn linger<S: AsFd>(stream: &S) {
    let fd = stream.as_fd();
    // Not a socket (or already shut down): nothing to wait for.
    if shutdown(fd.as_raw_fd(), Shutdown::Write).is_err() {
        return;
    }
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(POWER_OFF_LINGER));
}

/// Writes one response line on the connection behind `reader`.
fn respond<S: Write>(reader: &mut BufReader<S>, response: &Response) -> io::Result<()> {
    let stream = reader.get_mut();
    stream.write_all(&response.to_line())?;
    stream.flush()
}

/// An error response; the error also goes to the console.
fn error_response(e: impl std::fmt::Display) -> Response {
    let response = Response::error(e);
    if let Some(msg) = &response.error {
        console::error(format_args!("request failed: {msg}"));
    }
    response
}

/// Serves every connection of `listener` on its own thread. Never returns.
pub fn serve_forever<P: Platform>(server: Arc<Server<P>>, listener: VsockListener) -> ! {
    let mut last_error = String::new();
    loop {
        match listener.accept() {
            Ok(stream) => {
                last_error.clear();
                let server = Arc::clone(&server);
                let spawned =
                    std::thread::Builder::new()
                        .name("connection".into())
                        .spawn(move || {
                            if let Err(e) = server.handle_connection(stream) {
                                console::error(format_args!("connection: {e}"));
                            }
                        });
                if let Err(e) = spawned {
                    console::error(format_args!("cannot start a connection thread: {e}"));
                }
            }
            Err(e) => {
                // Log a persistent error once, not ten times a second.
                let msg = e.to_string();
                if msg != last_error {
                    console::error(format_args!("vsock accept: {msg}"));
                    last_error = msg;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Powers the guest off when the host connects to [`POWER_PORT`]; runs on its own
/// thread.
pub fn serve_power_port<P: Platform>(platform: P) {
    let spawned = std::thread::Builder::new()
        .name("power-port".into())
        .spawn(move || {
            let listener = listen_retrying(POWER_PORT);
            loop {
                match listener.accept() {
                    Ok(_stream) => {
                        console::info("power off requested by the host");
                        let e = platform.power_off();
                        console::error(format_args!("power off failed: {e}"));
                    }
                    Err(e) => {
                        console::error(format_args!("power port accept: {e}"));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        console::error(format_args!("cannot start the power port thread: {e}"));
    }
}

/// Binds and listens, retrying with backoff: vsock may be missing (no device, no
/// transport) and a PID 1 must keep running. Each distinct error is logged once.
pub fn listen_retrying(port: u32) -> VsockListener {
    let mut delay = Duration::from_secs(1);
    let mut last_error = String::new();
    loop {
        match VsockListener::bind(vsock::CID_ANY, port) {
            Ok(listener) => return listener,
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    console::error(format_args!(
                        "cannot listen on vsock port {port}: {msg} (retrying)"
                    ));
                    last_error = msg;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_LISTEN_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests;
