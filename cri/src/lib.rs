//! vmlet's CRI v1 services. Each service validates and translates CRI requests and calls a
//! narrow backend trait that the daemon (`vmlet-agent`) implements, so this crate knows
//! nothing of registries or VMs and the daemon nothing of protobuf.
//!
//! - [`image`]: the ImageService.
//! - [`runtime`]: the RuntimeService (pods and containers).

pub mod image;
pub mod runtime;

/// The CRI v1 protocol types and generated gRPC servers/clients (`runtime.v1`).
pub use k8s_cri::v1 as proto;
