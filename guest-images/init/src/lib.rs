//! vmlet-init, the guest side of vmlet: PID 1 inside every pod VM and the pod's
//! container supervisor.
//!
//! It is started by the kernel from the initramfs as `/init` and
//!
//! 1. prints `vmlet-init: started` on the console (the boot-time benchmark stops there),
//! 2. sets up the system a PID 1 owes its processes ([`pid1`]: mounts, loopback,
//!    hostname, zombie reaping, termination signals, power off),
//! 3. prints `vmlet-init: ready` and serves the host's gRPC calls over virtio-vsock
//!    ([`server`]; the protocol is `proto/vmlet/agent/v1/agent.proto`): guest
//!    configuration ([`guest`]) and containers ([`container`]).
//!
//! vmlet-init runs on one thread (a current-thread tokio runtime). That keeps it small
//! and makes forking container processes safe. Layers are one-way: `server` uses
//! `container`, `guest` and `pid1`; `container` and `guest` use `pid1`; `main.rs` only
//! wires them together. PID 1 must never exit or panic (the kernel would panic with
//! it), so every error becomes an error response or one console line.

pub mod console;
pub mod container;
pub mod guest;
pub mod pid1;
pub mod server;

/// Held by unit tests that start child processes: the reaper's test reaps every child
/// of the test process (`waitpid(-1)`, as PID 1 must), which would take the exit
/// statuses other tests wait for.
#[cfg(test)]
pub(crate) static CHILD_PROCESSES: std::sync::Mutex<()> = std::sync::Mutex::new(());
