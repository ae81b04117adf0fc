//! vmletd, vmlet's node daemon, as a library: the daemon's parts live here so that
//! tests and the binary share them.
//!
//! - [`config`]: the TOML configuration and command-line flags;
//! - [`images`]: registry pulls, the content store, flattened read-only block images
//!   and the image metadata the CRI ImageService serves;
//! - [`network`]: pod network namespaces, the CNI plugin chain, and the tap that carries
//!   a pod's interface into its VM (not yet wired into pods);
//! - [`sandbox`]: a pod's VM (vmlet-vmm process, disks, guest connection);
//! - [`store`]: persisted pod and container state;
//! - [`logs`]: container output into CRI log files;
//! - [`runtime`]: the pod and container controller behind the CRI RuntimeService;
//! - [`daemon`]: serving both CRI services on the socket.

pub mod config;
pub mod daemon;
pub mod images;
pub mod logs;
pub mod network;
pub mod runtime;
pub mod sandbox;
pub mod store;

#[cfg(feature = "testing")]
pub mod testing;
