//! vmlet's host ⇄ guest protocol: gRPC services compiled from
//! `vmlet/agent/v1/agent.proto` (read it for the semantics of every call), and, with
//! the `client` feature, [`hybrid`]: the host side of a connection to the guest through
//! the VMM's hybrid-vsock unix socket.

/// The guest's vsock port for the [`agent`] services.
pub const AGENT_PORT: u32 = 1024;

/// The guest's vsock port for port-forwarding: each connection is one forwarded TCP
/// connection. The host sends the TCP port as two bytes (big-endian); the guest
/// connects to `127.0.0.1:PORT`, else `[::1]:PORT`, inside the VM (the pod's network
/// namespace) and answers one line: `OK\n`, or `ERR <reason>\n` (at most
/// [`PORT_FORWARD_MAX_REPLY`] bytes) and closes. After `OK`, raw bytes both ways
/// until each side shuts down its half.
///
/// A raw vsock stream rather than a gRPC call: a forwarded connection is a byte
/// stream with half-close, which a stream socket carries as is (with the kernel's
/// backpressure), where gRPC would need framing, flow control and an end-of-input
/// message of its own.
pub const PORT_FORWARD_PORT: u32 = 1025;

/// Longest reply line of [`PORT_FORWARD_PORT`], newline included.
pub const PORT_FORWARD_MAX_REPLY: usize = 256;

/// The protocol version reported by `Health`.
pub const PROTOCOL_VERSION: &str = "v1";

/// Generated messages, clients and servers of package `vmlet.agent.v1`.
#[allow(missing_docs, clippy::all)]
pub mod agent {
    tonic::include_proto!("vmlet.agent.v1");
}

#[cfg(feature = "client")]
pub mod hybrid;
