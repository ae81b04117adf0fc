//! Resource use of a pod: one `Stats` call to its guest, which measures itself (the
//! VM is the pod) and its containers' cgroups and writable layers.

use vmlet_cri::runtime::{ContainerUsage, HostUsage, InterfaceUsage, PodUsage};
use vmlet_proto::agent as pb;

use super::container::running_vm;
use super::error::RuntimeError;
use super::state::Inner;
use super::util::{lock, now_ns};
use crate::network::counters;
use crate::network::netns::Netns;
use crate::network::pod::POD_IFNAME;
use crate::sandbox::{cgroup_stats, guest};

fn container_usage(c: &pb::ContainerStats, at_ns: i64) -> ContainerUsage {
    ContainerUsage {
        timestamp_ns: at_ns,
        cpu_usage_ns: c.cpu_usage_usec.saturating_mul(1000),
        memory_usage_bytes: c.memory_usage_bytes,
        memory_working_set_bytes: c.memory_working_set_bytes,
        pids: c.pids,
        writable_layer_bytes: c.writable_layer_bytes,
        writable_layer_inodes: c.writable_layer_inodes,
    }
}

/// The usage of `stats`, a guest's answer, read at `at_ns`; the writable layers live
/// on the file system of `mountpoint`.
pub fn pod_usage_from(stats: pb::StatsResponse, at_ns: i64, mountpoint: String) -> PodUsage {
    let g = stats.guest.unwrap_or_default();
    PodUsage {
        timestamp_ns: at_ns,
        cpu_usage_ns: g.cpu_usage_usec.saturating_mul(1000),
        memory_usage_bytes: g
            .memory_total_bytes
            .saturating_sub(g.memory_available_bytes),
        memory_available_bytes: g.memory_available_bytes,
        containers: stats
            .containers
            .iter()
            .map(|c| (c.container_id.clone(), container_usage(c, at_ns)))
            .collect(),
        writable_layer_mountpoint: mountpoint,
        host: None,
        network: Vec::new(),
    }
}

/// The traffic of the pod's CNI interface, counted in its network namespace on the
/// host; none for a pod without a network or when it cannot be read (logged).
async fn network_usage(netns: Option<std::path::PathBuf>) -> Vec<InterfaceUsage> {
    let Some(ns) = netns.as_deref().and_then(Netns::open) else {
        return Vec::new();
    };
    let read = tokio::task::spawn_blocking(move || counters::read(&ns, &[POD_IFNAME])).await;
    match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!("pod stats without network figures: {e}");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("pod stats without network figures: {e}");
            Vec::new()
        }
    }
}

/// The pod's cost on the host from its host cgroup `dir`; none when it cannot be
/// read (logged: the guest's own figures stand in).
fn host_usage(dir: &std::path::Path) -> Option<HostUsage> {
    match cgroup_stats::usage(dir) {
        Ok(u) => Some(HostUsage {
            cpu_usage_ns: u.cpu_usage_ns,
            memory_usage_bytes: u.memory_bytes,
            working_set_bytes: u.working_set_bytes,
            rss_bytes: u.anon_bytes,
            page_faults: u.page_faults,
            major_page_faults: u.major_page_faults,
            available_bytes: u.available_bytes,
        }),
        Err(e) => {
            tracing::warn!("pod stats without host figures: {e}");
            None
        }
    }
}

/// Asks a ready pod's guest for its usage and that of containers `ids` (all when
/// empty).
pub async fn pod_usage(
    inner: &Inner,
    pod_id: &str,
    ids: Vec<String>,
) -> Result<PodUsage, RuntimeError> {
    let pod = inner.pod(pod_id)?;
    let vm = running_vm(&pod)?;
    let stats = vm
        .client
        .clone()
        .stats(guest::req(
            pb::StatsRequest { container_ids: ids },
            guest::CALL,
        ))
        .await
        .map_err(RuntimeError::guest("Stats"))?
        .into_inner();
    // Host time, as for the containers' other times: the guest's clock is its own.
    // The writable layers are in the pod's scratch disk, a file in the state directory.
    let mut usage = pod_usage_from(
        stats,
        now_ns(),
        inner.settings.state_dir.display().to_string(),
    );
    let (cgroup, netns) = {
        let r = lock(&pod.record);
        (
            r.cgroup.as_ref().map(|c| c.dir.clone()),
            r.network.as_ref().map(|n| n.netns.clone()),
        )
    };
    usage.host = cgroup.as_deref().and_then(host_usage);
    usage.network = network_usage(netns).await;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_figures_become_cri_units() {
        let stats = pb::StatsResponse {
            containers: vec![pb::ContainerStats {
                container_id: "c1".into(),
                timestamp_ns: 1,
                cpu_usage_usec: 1_500,
                memory_usage_bytes: 10 << 20,
                memory_working_set_bytes: 8 << 20,
                pids: 2,
                writable_layer_bytes: 4096,
                writable_layer_inodes: 3,
                ..Default::default()
            }],
            guest: Some(pb::GuestStats {
                cpu_usage_usec: 20_000,
                memory_total_bytes: 512 << 20,
                memory_available_bytes: 400 << 20,
                processes: 70,
                ..Default::default()
            }),
        };
        let u = pod_usage_from(stats, 42, "/state".into());
        assert_eq!(u.timestamp_ns, 42);
        assert_eq!(u.cpu_usage_ns, 20_000_000);
        assert_eq!(u.memory_usage_bytes, 112 << 20);
        assert_eq!(u.memory_available_bytes, 400 << 20);
        assert_eq!(u.writable_layer_mountpoint, "/state");
        let c = &u.containers["c1"];
        assert_eq!((c.cpu_usage_ns, c.timestamp_ns), (1_500_000, 42));
        assert_eq!((c.memory_working_set_bytes, c.pids), (8 << 20, 2));
        assert_eq!((c.writable_layer_bytes, c.writable_layer_inodes), (4096, 3));
    }
}
