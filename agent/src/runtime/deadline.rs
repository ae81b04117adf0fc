//! The caller's deadline for RunPodSandbox, and what a fresh boot takes: each step of
//! a pod start (the warm VM's ping, its adoption, a fresh boot) is given what is left
//! of the deadline, and a fallback that cannot finish in time is not started.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::util::lock;

/// When a call must be answered; no deadline when the caller set none.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Deadline(Option<Instant>);

impl Deadline {
    pub(super) fn new(at: Option<Instant>) -> Self {
        Deadline(at)
    }

    /// The instant, if there is one.
    pub(super) fn at(self) -> Option<Instant> {
        self.0
    }

    /// Time left (zero once passed); `None` without a deadline.
    pub(super) fn left(self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// `limit`, cut to the time left.
    pub(super) fn cap(self, limit: Duration) -> Duration {
        self.left().map_or(limit, |left| left.min(limit))
    }

    /// Whether `need` still fits before the deadline.
    pub(super) fn allows(self, need: Duration) -> bool {
        self.left().is_none_or(|left| left > need)
    }

    /// What the caller sees in a message: "N ms" left, or that it had none.
    pub(super) fn describe_left(self) -> String {
        match self.left() {
            Some(left) => format!("{} ms", left.as_millis()),
            None => "no deadline".to_owned(),
        }
    }
}

/// How many recent boots [`BootEstimate`] remembers.
const KEPT_BOOTS: usize = 8;

/// What a fresh boot takes here: the slowest of the last few (from the VMM's start to
/// its guest answering), so that a fallback is not started when it cannot finish.
#[derive(Debug, Default)]
pub(super) struct BootEstimate {
    recent: Mutex<VecDeque<Duration>>,
}

impl BootEstimate {
    /// Notes a boot that succeeded in `took`.
    pub(super) fn record(&self, took: Duration) {
        let mut recent = lock(&self.recent);
        if recent.len() == KEPT_BOOTS {
            recent.pop_front();
        }
        recent.push_back(took);
    }

    /// The slowest recent boot; zero before the first.
    pub(super) fn get(&self) -> Duration {
        lock(&self.recent).iter().max().copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_cap_and_allow() {
        let none = Deadline::default();
        assert_eq!(none.cap(Duration::from_secs(3)), Duration::from_secs(3));
        assert!(none.allows(Duration::from_secs(1000)));
        assert_eq!(none.describe_left(), "no deadline");
        let soon = Deadline::new(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(soon.cap(Duration::from_secs(3)), Duration::from_secs(3));
        assert!(soon.cap(Duration::from_secs(120)) <= Duration::from_secs(60));
        assert!(soon.allows(Duration::from_secs(30)));
        assert!(!soon.allows(Duration::from_secs(61)));
        let past = Deadline::new(Some(Instant::now() - Duration::from_secs(1)));
        assert_eq!(past.left(), Some(Duration::ZERO));
        assert_eq!(past.cap(Duration::from_secs(3)), Duration::ZERO);
        assert!(!past.allows(Duration::ZERO));
        assert_eq!(past.describe_left(), "0 ms");
    }

    #[test]
    fn the_estimate_is_the_slowest_recent_boot() {
        let e = BootEstimate::default();
        assert_eq!(e.get(), Duration::ZERO);
        e.record(Duration::from_secs(9));
        for s in 1..=KEPT_BOOTS as u64 {
            assert_eq!(e.get(), Duration::from_secs(9));
            e.record(Duration::from_secs(s));
        }
        // The slow boot has left the window.
        assert_eq!(e.get(), Duration::from_secs(KEPT_BOOTS as u64));
    }
}
