//! vmletd, vmlet's node daemon, as a library: the daemon's parts live here so that
//! tests, benchmarks and the binary share them. From the top down:
//!
//! - [`daemon`]: logging, the image manager and the runtime, and both CRI services
//!   (RuntimeService and ImageService) on one unix socket;
//! - [`streaming`]: the streaming server (kubectl exec, attach, port-forward) over the
//!   runtime;
//! - [`config`]: the TOML configuration and command-line flags;
//! - [`metrics`]: vmletd's figures for Prometheus and the endpoint that serves them;
//! - [`runtime`]: the pod and container controller behind the CRI RuntimeService: pods,
//!   containers, exec, resources, stats, the warm pool of booted VMs, and re-adopting
//!   pods after a restart;
//! - [`images`]: registry pulls, the content store, flattened read-only block images
//!   and the image records the CRI ImageService serves;
//! - [`sandbox`]: a pod's VM (vmlet-vmm process, disks, guest connection) and the
//!   [`sandbox::Hypervisor`] / [`sandbox::VmControl`] seam the runtime reaches VMs
//!   through: real vmlet-vmm processes ([`sandbox::Processes`]), or in the unit tests an
//!   in-memory fake (`sandbox::fake`);
//! - [`network`]: pod network namespaces, the node's CNI plugin chain, and the tap that
//!   carries a pod's interface into its VM;
//! - [`volumes`]: how a container's CRI mounts reach its pod's guest (copied and kept
//!   in sync, copied back, or made in the guest);
//! - [`logs`]: container output into CRI log files;
//! - [`store`]: persisted pod and container state.
//!
//! The test fixtures (local registry, image builders) are not here but in the
//! `vmlet-test-support` crate.

pub mod config;
pub mod daemon;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod runtime;
pub mod sandbox;
pub mod store;
pub mod streaming;
pub mod volumes;
