//! vmletd, vmlet's node daemon, as a library: the daemon's parts live here so that
//! tests and the binary share them.
//!
//! - [`images`]: registry pulls, the content store, flattened read-only block images
//!   and the image metadata the CRI ImageService serves.

pub mod images;

#[cfg(feature = "testing")]
pub mod testing;
