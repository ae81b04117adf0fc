//! How the CRI mounts of a container reach its pod's guest: [`plan`] decides per mount
//! (copied and kept in sync, a termination log copied back, an emptyDir made in the
//! guest, or refused with the reason), [`tree`] reads host trees, and [`sync`] keeps a
//! pod's guest volumes made, current and cleaned up.

pub mod plan;
pub mod sync;
pub mod tree;

pub use plan::{plan_all, Class, PlanError, Planned, VolumeSettings};
pub use sync::{PodVolumes, VolumeError};
