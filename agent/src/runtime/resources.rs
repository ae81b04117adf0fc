//! UpdateContainerResources: the new limits merged into the container's, applied to
//! its cgroup in the guest, then recorded (ContainerStatus reports them).

use std::sync::Arc;

use vmlet_cri::runtime::{ContainerState, ResourcesConfig};
use vmlet_proto::agent as pb;

use super::container::running_vm;
use super::error::RuntimeError;
use super::spec;
use super::state::Inner;
use super::util::lock;
use crate::sandbox::guest;

/// `old` with the limits `new` sets: as containerd merges an update into the spec,
/// a 0 keeps the current value (the CRI cannot unset a limit). The OOM score belongs
/// to the running process, not to its cgroup: it stays as created.
pub fn merge(old: &ResourcesConfig, new: &ResourcesConfig) -> ResourcesConfig {
    let pick = |new: i64, old: i64| if new != 0 { new } else { old };
    ResourcesConfig {
        cpu_period: pick(new.cpu_period, old.cpu_period),
        cpu_quota: pick(new.cpu_quota, old.cpu_quota),
        cpu_shares: pick(new.cpu_shares, old.cpu_shares),
        memory_limit_bytes: pick(new.memory_limit_bytes, old.memory_limit_bytes),
        oom_score_adj: old.oom_score_adj,
    }
}

/// Changes the limits of a created or running container. containerd also accepts an
/// exited one (it only rewrites the spec); here nothing could ever apply them, so that
/// is FailedPrecondition.
pub async fn update(
    inner: &Arc<Inner>,
    id: &str,
    new: ResourcesConfig,
) -> Result<(), RuntimeError> {
    let c = inner.container(id)?;
    let pod = c.pod.clone();
    // Serialised with start, stop and other updates of the pod's containers.
    let _op = pod.op.lock().await;
    let (state, old) = {
        let r = lock(&c.record);
        (r.state, r.config.resources.clone())
    };
    if !matches!(state, ContainerState::Created | ContainerState::Running) {
        return Err(RuntimeError::Precondition(format!(
            "container {id} is {state:?}: only a created or running container's resources can be updated"
        )));
    }
    let vm = running_vm(&pod)?;
    let merged = merge(&old, &new);
    vm.client
        .clone()
        .update_resources(guest::req(
            pb::UpdateResourcesRequest {
                container_id: id.to_owned(),
                resources: Some(spec::guest_resources(&merged)),
            },
            guest::CALL,
        ))
        .await
        .map_err(RuntimeError::guest("UpdateResources"))?;
    lock(&c.record).config.resources = merged.clone();
    c.save()?;
    tracing::info!(container = %id, resources = ?merged, "resources updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_the_current_limit() {
        let old = ResourcesConfig {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_bytes: 256 << 20,
            oom_score_adj: 900,
        };
        let new = ResourcesConfig {
            cpu_quota: 20_000,
            memory_limit_bytes: 64 << 20,
            oom_score_adj: -5,
            ..Default::default()
        };
        assert_eq!(
            merge(&old, &new),
            ResourcesConfig {
                cpu_period: 100_000,
                cpu_quota: 20_000,
                cpu_shares: 512,
                memory_limit_bytes: 64 << 20,
                oom_score_adj: 900,
            }
        );
        assert_eq!(merge(&old, &ResourcesConfig::default()), old);
    }
}
