//! A blob by digest and size: what image records and pull errors name.

use serde::{Deserialize, Serialize};

use crate::images::digest::Digest;

/// A blob the image is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}
