//! vmletd, vmlet's node daemon, as a library: the daemon's parts live here so that
//! tests and the binary share them.
//!
//! - [`images`]: registry pulls, the content store, flattened read-only block images
//!   and the image metadata the CRI ImageService serves.
//! - [`network`]: pod network namespaces, the CNI plugin chain, and the tap that carries
//!   a pod's interface into its VM.

pub mod images;
pub mod network;

#[cfg(feature = "testing")]
pub mod testing;
