//! What a metrics scrape reads of the runtime: its pods and containers by state, its
//! warm pools, and what each ready pod's VMM counted (asked over its control socket,
//! all at once, each within [`VMM_WAIT`]).

use std::time::Duration;

use vmlet_cri::runtime::ContainerState;

use super::state::Inner;
use super::util::lock;
use crate::metrics::{PodIdentity, Scraped, VmmFigures};
use crate::store::PodPhase;

/// How long a scrape waits for a VMM's counters: a busy or stuck VMM must not hold
/// the scrape up (Prometheus gives up after 10 s by default).
const VMM_WAIT: Duration = Duration::from_secs(1);

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
    let asked = pods.iter().filter_map(|p| {
        let vm = p.vm()?;
        let pod = {
            let r = lock(&p.record);
            if r.phase != PodPhase::Ready {
                return None;
            }
            PodIdentity {
                id: p.id.clone(),
                name: r.config.metadata.name.clone(),
                namespace: r.config.metadata.namespace.clone(),
            }
        };
        Some(async move {
            let counters = match vm.counters(VMM_WAIT).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(pod = %pod.id, "no counters from the VMM: {e}");
                    None
                }
            };
            VmmFigures { pod, counters }
        })
    });
    let vmms = futures_util::future::join_all(asked).await;
    Scraped {
        pods: pods_by_state,
        containers: by_state.iter().map(|(_, name, n)| (*name, *n)).collect(),
        warm_pools: inner.warm.iter().map(|p| p.figures()).collect(),
        vmms,
    }
}
