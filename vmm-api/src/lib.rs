//! The API of `vmlet-vmm`, shared by the VMM and every program that starts or
//! controls one (vmletd, the tests), so that both sides of the process boundary
//! compile against the same types: a renamed field or flag fails to build instead
//! of failing in an end-to-end test.
//!
//! - [`config`]: the launch configuration ([`VmConfig`]), what `--config` reads as
//!   JSON, and the syntax of the flag values (`--drive id=...,path=...[,ro]`).
//! - [`args`]: a configuration turned into the exact `vmlet-vmm` argv, or into the
//!   JSON file for `--config`.
//! - [`control`]: the control socket's requests and replies, with the protocol
//!   version ([`PROTOCOL_VERSION`]) that both sides check.
//! - [`exit`]: how the VMM says why it ended: its last line on stderr and its exit
//!   record.
//!
//! The crate has no KVM or I/O dependencies: it only describes and encodes.

pub mod args;
pub mod config;
pub mod control;
pub mod exit;

pub use args::ArgsError;
pub use config::{
    ConfigError, DriveConfig, FlagError, Limits, NetConfig, SerialOutput, VmConfig, VsockConfig,
};
pub use control::{
    DriveStatus, ProtocolError, Request, Response, StatusReply, SwapDriveReply, VmState,
    PROTOCOL_VERSION,
};
pub use exit::ExitRecord;
