//! Single-use tokens naming a pending request in a streaming URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::request::{AttachRequest, ExecRequest, PortForwardRequest, RequestError};

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// `/exec/TOKEN`.
    Exec(ExecRequest),
    /// `/attach/TOKEN`.
    Attach(AttachRequest),
    /// `/portforward/TOKEN`.
    PortForward(PortForwardRequest),
}

impl Pending {
    /// The URL path segment of this kind.
    pub fn route(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// Pending requests by token; each is taken at most once and only before it expires.
#[derive(Debug)]
pub struct TokenStore {
    map: Mutex<HashMap<String, (Pending, Instant)>>,
    ttl: Duration,
    max: usize,
}

impl TokenStore {
    /// A store whose tokens live `ttl`, holding at most `max` at once.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            map: Mutex::default(),
            ttl,
            max,
        }
    }

    /// Stores `p` under a fresh random token.
    pub fn insert(&self, p: Pending) -> Result<String, RequestError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| RequestError::Random(e.to_string()))?;
        let token = hex::encode(raw);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max {
            map.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        }
        if map.len() >= self.max {
            return Err(RequestError::TooManyPending(self.max));
        }
        map.insert(token.clone(), (p, now));
        Ok(token)
    }

    /// Takes the request under `token` if it is of `route` and not expired.
    pub fn take(&self, route: &str, token: &str) -> Option<Pending> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (p, at) = map.remove(token)?;
        (at.elapsed() < self.ttl && p.route() == route).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![],
        })
    }

    #[test]
    fn single_use_and_expiry() {
        let s = TokenStore::new(Duration::from_millis(50), 2);
        let t = s.insert(pf()).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(s.take("exec", &t), None, "wrong route consumes the token");
        let t = s.insert(pf()).unwrap();
        assert_eq!(s.take("portforward", &t), Some(pf()));
        assert_eq!(s.take("portforward", &t), None);
        let t = s.insert(pf()).unwrap();
        s.insert(pf()).unwrap();
        assert_eq!(s.insert(pf()), Err(RequestError::TooManyPending(2)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.take("portforward", &t), None);
        // Expired tokens make room.
        s.insert(pf()).unwrap();
    }
}
