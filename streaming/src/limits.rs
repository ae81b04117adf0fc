//! Caps on concurrent sessions, per container (or pod, for port-forward) and per node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Over a cap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// The container or pod has its maximum of sessions.
    #[error("too many streaming sessions for {key} (limit {limit})")]
    PerTarget {
        /// Container or pod id.
        key: String,
        /// The cap.
        limit: usize,
    },
    /// The node has its maximum of sessions.
    #[error("too many streaming sessions on this node (limit {0})")]
    Node(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_key: HashMap<String, usize>,
}

/// Session counts.
#[derive(Debug, Clone)]
pub struct Limits {
    counts: Arc<Mutex<Counts>>,
    per_target: usize,
    per_node: usize,
}

/// One counted session; dropping it frees its place.
#[derive(Debug)]
pub struct SessionGuard {
    counts: Arc<Mutex<Counts>>,
    key: String,
}

impl Limits {
    /// Caps of `per_target` sessions per container or pod and `per_node` in all.
    pub fn new(per_target: usize, per_node: usize) -> Self {
        Self {
            counts: Arc::default(),
            per_target,
            per_node,
        }
    }

    /// Counts a session for `key`, or says which cap it hits.
    pub fn acquire(&self, key: &str) -> Result<SessionGuard, LimitError> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.per_node {
            return Err(LimitError::Node(self.per_node));
        }
        let n = c.by_key.entry(key.to_owned()).or_default();
        if *n >= self.per_target {
            return Err(LimitError::PerTarget {
                key: key.to_owned(),
                limit: self.per_target,
            });
        }
        *n += 1;
        c.total += 1;
        Ok(SessionGuard {
            counts: self.counts.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        let l = Limits::new(2, 3);
        let a1 = l.acquire("a").unwrap();
        let _a2 = l.acquire("a").unwrap();
        assert!(matches!(l.acquire("a"), Err(LimitError::PerTarget { .. })));
        let _b = l.acquire("b").unwrap();
        assert_eq!(l.acquire("c").unwrap_err(), LimitError::Node(3));
        drop(a1);
        l.acquire("a").unwrap();
    }
}
