//! Test fixtures shared by vmlet's tests and benchmarks: a real OCI registry (Debian's
//! `docker-registry`) on a loopback port with a temporary storage directory, optionally
//! behind basic or token auth or served over TLS with a throw-away certificate
//! authority, and builders for OCI images pushed into it with `skopeo`.
//!
//! ```no_run
//! use vmlet_test_support::{busybox_image, TestRegistry};
//! let registry = TestRegistry::start().unwrap();
//! let reference = registry.push(&busybox_image().unwrap(), "busybox:latest").unwrap();
//! // pull `reference` (e.g. "127.0.0.1:41234/busybox:latest") over plain HTTP
//! ```
//!
//! Everything fails loudly: a test that needs the registry must not pass without it.
//!
//! [`kubectl`] is a fake Kubernetes API server in front of a streaming server, for
//! tests that run the real kubectl exec, attach and port-forward.
//!
//! Modules depend one way: `registry` uses `image`, `tls` and `token`, and all four use
//! `error`; `kubectl` stands alone.

mod error;
mod image;
pub mod kubectl;
mod registry;
mod tls;
mod token;

pub use error::FixtureError;
pub use image::{
    busybox_image, busybox_image_with, busybox_image_with_files, busybox_image_with_programs,
    Compression, ImageBuilder, LayerBuilder, OciImage,
};
pub use registry::TestRegistry;
pub use tls::TestCerts;
