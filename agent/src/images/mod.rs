//! Images: pull from registries into a content store, flatten each image once into a
//! read-only erofs block image shared by every pod, and keep the records the CRI
//! ImageService serves.
//!
//! Layout under the state directory:
//!
//! ```text
//! content/blobs/sha256/<hex>   verified blobs (manifests, configs, layers), shared
//! content/ingest/              downloads in progress (cleared on open)
//! erofs/<hex>.erofs            one block image per image ID
//! tmp/                         scratch roots while flattening (cleared on open)
//! images.json                  image records
//! ```
//!
//! For the VM side: [`ImageManager::block_image`] gives the erofs file and recorded config
//! of a pulled image; [`ImageManager::lease`] keeps it from being removed while a
//! container uses it.

mod cri;
pub mod digest;
pub mod flatten;
pub mod limits;
mod locks;
pub mod metadata;
pub mod pull;
pub mod reference;
mod service;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use limits::{ImageLimits, LimitExceeded};
pub use metadata::{ImageConfig, ImageRecord};
pub use pull::{Credentials, RegistriesConfig, RegistryHost};
pub use reference::ImageRef;
pub use service::{
    BlockImage, FsUsage, ImageError, ImageLease, ImageManager, ImageManagerConfig, PullOutcome,
    PullTimings,
};
