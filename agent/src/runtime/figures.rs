//! What a metrics scrape reads of the runtime: its pods and containers by state and
//! its warm pools.

use vmlet_cri::runtime::ContainerState;

use super::state::Inner;
use super::util::lock;
use crate::metrics::Scraped;
use crate::store::PodPhase;

/// The runtime's figures now.
pub(super) async fn scrape(inner: &Inner) -> Scraped {
    let (pods, containers) = {
        let t = lock(&inner.tables);
        let pods: Vec<_> = t.pods.values().cloned().collect();
        let containers: Vec<_> = t.containers.values().cloned().collect();
        (pods, containers)
    };
    // As PodSandboxStatus reports them: ready while the VM runs and takes containers.
    let ready = pods
        .iter()
        .filter(|p| lock(&p.record).phase == PodPhase::Ready)
        .count() as u64;
    let pods_by_state = vec![("ready", ready), ("notready", pods.len() as u64 - ready)];
    let mut by_state = [
        (ContainerState::Created, "created", 0),
        (ContainerState::Running, "running", 0),
        (ContainerState::Exited, "exited", 0),
        (ContainerState::Unknown, "unknown", 0),
    ];
    for c in &containers {
        let state = lock(&c.record).state;
        if let Some(entry) = by_state.iter_mut().find(|(s, _, _)| *s == state) {
            entry.2 += 1;
        }
    }
    Scraped {
        pods: pods_by_state,
        containers: by_state.iter().map(|(_, name, n)| (*name, *n)).collect(),
        warm_pools: inner.warm.iter().map(|p| p.figures()).collect(),
    }
}
