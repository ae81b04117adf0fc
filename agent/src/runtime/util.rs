//! Small helpers every part of the runtime uses.

use std::sync::{Mutex, MutexGuard};

use super::error::RuntimeError;
use crate::store;

/// Locks a std mutex, carrying on after a panic elsewhere (the data is plain state,
/// valid between statements).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh 64-hex ID.
pub(super) fn new_id() -> Result<String, RuntimeError> {
    let mut buf = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| {
            RuntimeError::Store(store::StoreError::Io {
                op: "read",
                path: "/dev/urandom".into(),
                source,
            })
        })?;
    Ok(hex::encode(buf))
}

pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
