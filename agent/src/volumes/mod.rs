//! How the CRI mounts of a container reach its pod's guest: [`plan`] decides per mount
//! (copied and kept in sync, a termination log copied back, an emptyDir made in the
//! guest, shared through virtio-fs, or refused with the reason), [`tree`] reads host
//! trees, [`share`] keeps a pod's shared directory and its virtiofsd, and [`sync`]
//! keeps a pod's guest volumes made, current and cleaned up.

pub mod plan;
pub mod share;
pub mod sync;
pub mod tree;

pub use plan::{plan_all, Class, PlanError, Planned, PodFacts, VolumeSettings};
pub use share::Share;
pub use sync::{PodVolumes, VolumeError};
