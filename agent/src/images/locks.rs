//! Per-key async locks: the second of two concurrent operations on the same key (a blob
//! digest, an image ID) waits for the first and then finds its result in place, so
//! concurrent pulls of one layer or image download and unpack it once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A set of locks created on demand and dropped when nobody holds or waits for them.
pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Weak<AsyncMutex<()>>>>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Waits for and takes the lock of `key`.
    pub async fn lock(&self, key: &K) -> OwnedMutexGuard<()> {
        let lock = {
            // A poisoned map only means another thread panicked while inserting; the map
            // itself is still consistent.
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, weak| weak.strong_count() > 0);
            match locks.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(AsyncMutex::new(()));
                    locks.insert(key.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}
