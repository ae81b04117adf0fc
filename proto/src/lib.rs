//! vmlet's host ⇄ guest protocol: gRPC services compiled from
//! `vmlet/agent/v1/agent.proto` (read it for the semantics of every call), and, with
//! the `client` feature, [`hybrid`]: the host side of a connection to the guest through
//! the VMM's hybrid-vsock unix socket.

/// The guest's vsock port for the [`agent`] services.
pub const AGENT_PORT: u32 = 1024;

/// The protocol version reported by `Health`.
pub const PROTOCOL_VERSION: &str = "v1";

/// Generated messages, clients and servers of package `vmlet.agent.v1`.
#[allow(missing_docs, clippy::all)]
pub mod agent {
    tonic::include_proto!("vmlet.agent.v1");
}

#[cfg(feature = "client")]
pub mod hybrid;
