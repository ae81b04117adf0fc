//! The CRI ImageService: `ListImages`, `ImageStatus`, `PullImage`, `RemoveImage`,
//! `ImageFsInfo`, served over any [`ImageBackend`].

mod backend;
pub(crate) mod convert;
mod server;

pub use backend::{BackendError, ErrorKind, FsUsage, ImageBackend, ImageInfo, PullAuth};
pub use server::ImageServer;
