//! vmlet-init, the guest side of vmlet: PID 1 inside every pod VM.
//!
//! It is started by the kernel from the initramfs as `/init` and
//!
//! 1. prints `vmlet-init: started` on the console (the boot-time benchmark stops there),
//! 2. sets up the system a PID 1 owes its processes ([`pid1`]: mounts, loopback, hostname,
//!    zombie reaping, termination signals, power off),
//! 3. prints `vmlet-init: ready` and serves the host over virtio-vsock ([`server`], with the
//!    wire format in [`protocol`]).
//!
//! Layers are one-way: `server` uses `pid1` and `protocol`; `pid1` and `protocol` use
//! nothing above them; `main.rs` only wires them together. PID 1 must never exit or panic
//! (the kernel would panic with it), so every error becomes one console line and, where a
//! client asked for something, an error response.

pub mod console;
pub mod pid1;
pub mod protocol;
pub mod server;
