//! The warm pools' bookkeeping (`vm.warm_pool`, and `warm_pool` of each RuntimeClass
//! handler): the booted VMs waiting for pods, the RunPodSandbox calls in progress, and
//! who waits for the VM being booted. What fills and empties them is in `warm`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

use super::util::lock;
use crate::metrics::WarmPoolFigures;
use crate::sandbox::Vm;
use crate::store::{PodPaths, PodRecord};

/// A booted VM waiting for a pod.
pub(super) struct WarmVm {
    /// The pod ID it will have.
    pub id: String,
    /// The handler whose pool it is in.
    pub handler: String,
    pub paths: PodPaths,
    pub record: PodRecord,
    pub vm: Vm,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) ready: VecDeque<WarmVm>,
    /// Taken from `ready` after their VMM died: the refill task removes them.
    pub(super) dead: Vec<WarmVm>,
    pub(super) booting: bool,
    /// Calls waiting for the VM that is booting.
    pub(super) waiting: usize,
    /// RunPodSandbox calls in progress: the refill waits for none, so that it does not
    /// take CPU from pods starting.
    pub(super) starting: usize,
    pub(super) closed: bool,
}

/// The warm pool of each RuntimeClass handler ("" the default), made at start from
/// the same settings that resolve a pod's handler, so each handler has one.
pub(super) struct WarmPools(BTreeMap<String, WarmPool>);

impl WarmPools {
    pub fn new(pools: impl IntoIterator<Item = WarmPool>) -> Self {
        WarmPools(pools.into_iter().map(|p| (p.handler.clone(), p)).collect())
    }

    /// Handler `handler`'s pool.
    pub fn of(&self, handler: &str) -> Option<&WarmPool> {
        self.0.get(handler)
    }

    pub fn iter(&self) -> impl Iterator<Item = &WarmPool> {
        self.0.values()
    }

    /// Marks a RunPodSandbox call in progress in every pool (no refill takes CPU from
    /// a pod starting, whatever its handler) until the guards are dropped.
    pub fn starting(&self) -> Vec<Starting<'_>> {
        self.iter().map(WarmPool::starting).collect()
    }

    /// Returns a VM that was taken but not used to its pool.
    pub fn put_back(&self, w: WarmVm) {
        match self.of(&w.handler) {
            Some(p) => p.put_back(w),
            // Every warm VM comes from one of these pools.
            None => tracing::error!(pod = %w.id, handler = %w.handler, "a warm VM of no pool"),
        }
    }

    /// Counts a failed warm VM of `handler`'s pool.
    pub fn count_failure(&self, handler: &str) {
        if let Some(p) = self.of(handler) {
            p.count_failure();
        }
    }
}

/// The pool of one handler.
pub(super) struct WarmPool {
    /// The RuntimeClass handler its VMs are booted for.
    pub(super) handler: String,
    pub(super) target: usize,
    /// Warm VMs that failed a pod (dead, silent, or a step of adoption failed).
    pub(super) failed: AtomicU64,
    /// vCPUs and MiB of the VMs in it.
    pub(super) size: (u32, u64),
    pub(super) state: Mutex<State>,
    pub(super) changed: Notify,
}

impl WarmPool {
    pub fn new(handler: &str, target: usize, size: (u32, u64)) -> Self {
        WarmPool {
            handler: handler.to_owned(),
            target,
            failed: AtomicU64::new(0),
            size,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    /// A warm VM for a pod of `size`, if the pool has one or is booting one that no
    /// other call waits for (until `deadline`). Call it under [`WarmPool::starting`].
    pub async fn take(&self, size: (u32, u64), deadline: Option<Instant>) -> Option<WarmVm> {
        if self.target == 0 || size != self.size {
            return None;
        }
        let mut waited = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read: a change in between still wakes us.
            notified.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if waited {
                    st.waiting -= 1;
                }
                // The caller holds a `Starting` guard, whose drop wakes the refill
                // task (to boot a replacement, or remove the dead).
                while let Some(w) = st.ready.pop_front() {
                    if w.vm.running() {
                        return Some(w);
                    }
                    st.dead.push(w);
                }
                if st.closed || !st.booting || st.waiting > 0 {
                    // Nothing ready, or the VM booting is promised to another call.
                    return None;
                }
                st.waiting += 1;
                waited = true;
            }
            let Some(at) = deadline else {
                notified.await;
                continue;
            };
            if tokio::time::timeout_at(at.into(), notified).await.is_err() {
                // The VM booting is not ready in time: the call boots its own or fails.
                lock(&self.state).waiting -= 1;
                return None;
            }
        }
    }

    /// Target, VMs ready, whether one boots, failures.
    pub fn figures(&self) -> WarmPoolFigures {
        let st = lock(&self.state);
        WarmPoolFigures {
            handler: self.handler.clone(),
            target: self.target as u64,
            ready: st.ready.len() as u64,
            booting: st.booting,
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// What verbose `Status` shows: size, target, VMs ready, whether one boots.
    pub fn state(&self) -> serde_json::Value {
        let f = self.figures();
        serde_json::json!({
            "vcpus": self.size.0,
            "memMib": self.size.1,
            "target": f.target,
            "ready": f.ready,
            "booting": f.booting,
            "failed": f.failed,
        })
    }

    /// Counts a warm VM that failed before its pod was handed out.
    pub fn count_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a RunPodSandbox call in progress until the guard is dropped.
    pub fn starting(&self) -> Starting<'_> {
        lock(&self.state).starting += 1;
        Starting(self)
    }

    /// Returns a VM that was taken but not used.
    pub fn put_back(&self, w: WarmVm) {
        lock(&self.state).ready.push_front(w);
        self.changed.notify_waiters();
    }

    /// Moves warm VM `id`, whose VMM died while it waited in the pool, to the dead
    /// (which the refill task removes and replaces); one already handed out is left
    /// alone.
    pub fn reap(&self, id: &str) {
        let mut st = lock(&self.state);
        let Some(i) = st.ready.iter().position(|w| w.id == id) else {
            return;
        };
        if let Some(w) = st.ready.remove(i) {
            st.dead.push(w);
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Stops refilling and hands out the VMs in the pool, for removal.
    pub(super) fn close(&self) -> Vec<WarmVm> {
        let mut st = lock(&self.state);
        st.closed = true;
        let mut all: Vec<WarmVm> = st.ready.drain(..).collect();
        all.append(&mut st.dead);
        drop(st);
        self.changed.notify_waiters();
        all
    }
}

/// A RunPodSandbox call in progress (see [`WarmPool::starting`]).
pub(super) struct Starting<'a>(&'a WarmPool);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).starting -= 1;
        self.0.changed.notify_waiters();
    }
}
