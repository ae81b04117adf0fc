//! Container seccomp profiles for vmlet's guests.
//!
//! vmletd reads a container's profile ([`Profile::from_json`] for an OCI or
//! Docker/containerd JSON profile, [`Profile::runtime_default`] for Kubernetes'
//! `RuntimeDefault`), [`compile`]s it for the container's capabilities, and sends
//! the bytes to the guest (`Process.seccomp_filter`), where vmlet-init installs
//! them with `seccomp(SECCOMP_SET_MODE_FILTER)` before `execve`.
//!
//! Refused: `SCMP_ACT_NOTIFY` and `listenerPath` (vmlet has no notify agent).
//! Not carried by the program: the profile's `flags` ([`Profile::flags`]).

mod compile;
mod default;
mod names;
mod profile;
mod select;

pub use compile::{compile, CompileError, MAX_INSTRUCTIONS};
pub use profile::{
    Flag, Profile, ProfileError, RuleRef, MAX_ARGS_PER_RULE, MAX_JSON_BYTES, MAX_NAMES,
    MAX_NAMES_PER_RULE, MAX_RULES,
};
