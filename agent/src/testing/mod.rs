//! Test fixtures shared by vmlet's crates (feature `testing`): a real OCI registry
//! (Debian's `docker-registry`) on a loopback port with a temporary storage directory,
//! and builders for OCI images pushed into it with `skopeo`.
//!
//! ```no_run
//! use vmlet_agent::testing::{busybox_image, TestRegistry};
//! let registry = TestRegistry::start().unwrap();
//! let reference = registry.push(&busybox_image().unwrap(), "busybox:latest").unwrap();
//! // pull `reference` (e.g. "127.0.0.1:41234/busybox:latest") over plain HTTP
//! ```
//!
//! Everything fails loudly: a test that needs the registry must not pass without it.

mod image;
mod registry;
mod token;

pub use image::{
    busybox_image, busybox_image_with, Compression, ImageBuilder, LayerBuilder, OciImage,
};
pub use registry::{FixtureError, TestRegistry};
