//! `ContainerStats`, `ListContainerStats`, `PodSandboxStats`, `ListPodSandboxStats`:
//! the CRI shapes of what the guests measure, the filters, and CPU rates.
//!
//! As containerd does:
//! - `usage_nano_cores` is the rate of the CPU counter since the previous sample of the
//!   same container (or pod), kept here; the first sample has none;
//! - only a running container has CPU and memory figures (containerd has them only
//!   from a live task); every container of the filter is listed, with its attributes
//!   and, when its pod's guest could measure it, its writable layer;
//! - a pod's process count is the sum of its containers' tasks.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::backend::{
    ContainerInfo, ContainerState, ContainerUsage, InterfaceUsage, PodInfo, PodUsage,
};
use super::sandbox_status::labels_match;
use crate::proto;

/// A cumulative CPU counter at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// CPU time (nanoseconds).
    pub usage_ns: u64,
    /// When (Unix nanoseconds).
    pub at_ns: i64,
}

/// The rate between two samples of a counter, in nanocores (CPU nanoseconds per
/// second); none when no time passed or the counter went back.
pub fn nano_cores(prev: Sample, now: Sample) -> Option<u64> {
    let elapsed = now.at_ns.checked_sub(prev.at_ns).filter(|&d| d > 0)?;
    let used = now.usage_ns.checked_sub(prev.usage_ns)?;
    let rate = u128::from(used) * 1_000_000_000 / elapsed as u128;
    Some(u64::try_from(rate).unwrap_or(u64::MAX))
}

/// The last CPU sample of each container or pod, for rates.
#[derive(Debug, Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, Sample>>,
}

impl CpuRates {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Sample>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rate of `id`'s counter since its previous sample, recording `now` as the
    /// next one's base. The first sample has no rate; neither has one taken at the
    /// same time as the previous (which stays the base).
    pub fn observe(&self, id: &str, now: Sample) -> Option<u64> {
        let mut last = self.lock();
        match last.get(id) {
            Some(prev) if now.at_ns <= prev.at_ns => None,
            Some(prev) => {
                // A counter that went back is a new counter: it is the new base.
                let rate = nano_cores(*prev, now);
                last.insert(id.to_owned(), now);
                rate
            }
            None => {
                last.insert(id.to_owned(), now);
                None
            }
        }
    }

    /// Forgets the IDs for which `keep` is false (removed containers and pods).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| keep(id));
    }
}

/// The CPU samples of containers and of pods.
#[derive(Debug, Default)]
pub struct Rates {
    /// By container ID.
    pub containers: CpuRates,
    /// By pod ID.
    pub pods: CpuRates,
}

/// The pod's network figures: its first interface is the default one.
fn network(at: i64, interfaces: &[InterfaceUsage]) -> Option<proto::NetworkUsage> {
    let usage = |i: &InterfaceUsage| proto::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    };
    let (default, rest) = interfaces.split_first()?;
    Some(proto::NetworkUsage {
        timestamp: at,
        default_interface: Some(usage(default)),
        interfaces: rest.iter().map(usage).collect(),
    })
}

fn value(v: u64) -> Option<proto::UInt64Value> {
    Some(proto::UInt64Value { value: v })
}

fn cpu(timestamp: i64, usage_ns: u64, rate: Option<u64>) -> proto::CpuUsage {
    proto::CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(usage_ns),
        usage_nano_cores: rate.and_then(value),
    }
}

/// Whether a container passes a `ListContainerStats` filter (ID or ID prefix, pod or
/// pod prefix, labels).
pub fn container_matches(c: &ContainerInfo, f: &proto::ContainerStatsFilter) -> bool {
    c.id.starts_with(&f.id)
        && c.pod_id.starts_with(&f.pod_sandbox_id)
        && labels_match(&c.config.labels, &f.label_selector)
}

/// Whether a pod passes a `ListPodSandboxStats` filter (ID or ID prefix, labels).
pub fn pod_matches(p: &PodInfo, f: &proto::PodSandboxStatsFilter) -> bool {
    p.id.starts_with(&f.id) && labels_match(&p.config.labels, &f.label_selector)
}

impl Rates {
    /// The CRI stats of a container, from its pod's usage if its guest could be asked.
    pub fn container(&self, c: &ContainerInfo, pod: Option<&PodUsage>) -> proto::ContainerStats {
        let usage = pod.and_then(|p| Some((p.containers.get(&c.id)?, p)));
        let attributes = Some(proto::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(proto::ContainerMetadata {
                name: c.config.name.clone(),
                attempt: c.config.attempt,
            }),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        });
        let writable_layer = usage.map(|(u, p)| proto::FilesystemUsage {
            timestamp: u.timestamp_ns,
            fs_id: Some(proto::FilesystemIdentifier {
                mountpoint: p.writable_layer_mountpoint.clone(),
            }),
            used_bytes: value(u.writable_layer_bytes),
            inodes_used: value(u.writable_layer_inodes),
        });
        let running = usage
            .filter(|_| c.state == ContainerState::Running)
            .map(|(u, _)| u);
        proto::ContainerStats {
            attributes,
            cpu: running.map(|u| self.container_cpu(&c.id, u)),
            memory: running.map(|u| proto::MemoryUsage {
                timestamp: u.timestamp_ns,
                working_set_bytes: value(u.memory_working_set_bytes),
                usage_bytes: value(u.memory_usage_bytes),
                ..Default::default()
            }),
            writable_layer,
            swap: None,
        }
    }

    fn container_cpu(&self, id: &str, u: &ContainerUsage) -> proto::CpuUsage {
        let rate = self.containers.observe(
            id,
            Sample {
                usage_ns: u.cpu_usage_ns,
                at_ns: u.timestamp_ns,
            },
        );
        cpu(u.timestamp_ns, u.cpu_usage_ns, rate)
    }

    /// The CRI stats of a ready pod: its CPU and memory, its containers' task count,
    /// and `containers` (the CRI stats of its containers, as the guest measures
    /// them). The pod's CPU and memory are what it costs the host (its host cgroup:
    /// the VMM, the guest's RAM as touched, virtiofsd), as a pod cgroup is accounted
    /// on any node; a pod without a host cgroup reports its guest's own figures.
    pub fn pod(
        &self,
        p: &PodInfo,
        usage: &PodUsage,
        containers: Vec<proto::ContainerStats>,
    ) -> proto::PodSandboxStats {
        let m = &p.config.metadata;
        let at = usage.timestamp_ns;
        let cpu_usage_ns = usage.host.map_or(usage.cpu_usage_ns, |h| h.cpu_usage_ns);
        let rate = self.pods.observe(
            &p.id,
            Sample {
                usage_ns: cpu_usage_ns,
                at_ns: at,
            },
        );
        let memory = match usage.host {
            Some(h) => proto::MemoryUsage {
                timestamp: at,
                working_set_bytes: value(h.working_set_bytes),
                usage_bytes: value(h.memory_usage_bytes),
                available_bytes: h.available_bytes.and_then(value),
                rss_bytes: value(h.rss_bytes),
                page_faults: value(h.page_faults),
                major_page_faults: value(h.major_page_faults),
            },
            None => proto::MemoryUsage {
                timestamp: at,
                // MemAvailable already leaves out the cache the guest can drop.
                working_set_bytes: value(usage.memory_usage_bytes),
                usage_bytes: value(usage.memory_usage_bytes),
                available_bytes: value(usage.memory_available_bytes),
                ..Default::default()
            },
        };
        proto::PodSandboxStats {
            attributes: Some(proto::PodSandboxAttributes {
                id: p.id.clone(),
                metadata: Some(proto::PodSandboxMetadata {
                    name: m.name.clone(),
                    uid: m.uid.clone(),
                    namespace: m.namespace.clone(),
                    attempt: m.attempt,
                }),
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
            }),
            linux: Some(proto::LinuxPodSandboxStats {
                cpu: Some(cpu(at, cpu_usage_ns, rate)),
                memory: Some(memory),
                network: network(at, &usage.network),
                process: Some(proto::ProcessUsage {
                    timestamp: at,
                    process_count: value(usage.containers.values().map(|c| c.pids).sum()),
                }),
                containers,
            }),
            windows: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::{ContainerConfig, HostUsage, PodConfig, PodState};

    const SEC: i64 = 1_000_000_000;

    fn sample(usage_ns: u64, at_ns: i64) -> Sample {
        Sample { usage_ns, at_ns }
    }

    #[test]
    fn nano_cores_are_the_counter_rate() {
        // Half a CPU second per second: half a core.
        assert_eq!(
            nano_cores(sample(1_000, SEC), sample(500_001_000, 2 * SEC)),
            Some(500_000_000)
        );
        // Two cores over 250 ms.
        assert_eq!(
            nano_cores(sample(0, 0), sample(500_000_000, SEC / 4)),
            Some(2_000_000_000)
        );
        assert_eq!(nano_cores(sample(5, SEC), sample(9, SEC)), None);
        assert_eq!(nano_cores(sample(9, SEC), sample(5, 2 * SEC)), None);
        assert_eq!(
            nano_cores(sample(0, 0), sample(u64::MAX, 1)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn rates_follow_samples() {
        let r = CpuRates::default();
        assert_eq!(r.observe("a", sample(100, SEC)), None);
        assert_eq!(r.observe("a", sample(100, SEC)), None);
        assert_eq!(
            r.observe("a", sample(100 + SEC as u64, 2 * SEC)),
            Some(1_000_000_000)
        );
        // Idle since.
        assert_eq!(r.observe("a", sample(100 + SEC as u64, 3 * SEC)), Some(0));
        // A counter that went back is the new base.
        assert_eq!(r.observe("a", sample(10, 4 * SEC)), None);
        assert_eq!(
            r.observe("a", sample(10 + 250_000_000, 5 * SEC)),
            Some(250_000_000)
        );
        assert_eq!(r.observe("b", sample(1, SEC)), None);
        r.retain(|id| id == "b");
        assert_eq!(r.observe("a", sample(1, 9 * SEC)), None);
        assert_eq!(r.observe("b", sample(1, 2 * SEC)), Some(0));
    }

    fn container(id: &str, pod: &str, state: ContainerState) -> ContainerInfo {
        let mut config = ContainerConfig {
            name: format!("n-{id}"),
            attempt: 2,
            ..Default::default()
        };
        config.labels.insert("app".into(), "web".into());
        config.annotations.insert("note".into(), "x".into());
        ContainerInfo {
            id: id.into(),
            pod_id: pod.into(),
            config,
            image_id: String::new(),
            state,
            created_at_ns: 0,
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: String::new(),
            verbose_json: String::new(),
            user: None,
        }
    }

    fn usage(ids: &[&str], cpu_ns: u64, at_ns: i64) -> PodUsage {
        PodUsage {
            timestamp_ns: at_ns,
            cpu_usage_ns: cpu_ns * 2,
            memory_usage_bytes: 300 << 20,
            memory_available_bytes: 200 << 20,
            containers: ids
                .iter()
                .map(|id| {
                    let u = ContainerUsage {
                        timestamp_ns: at_ns,
                        cpu_usage_ns: cpu_ns,
                        memory_usage_bytes: 40 << 20,
                        memory_working_set_bytes: 30 << 20,
                        pids: 3,
                        writable_layer_bytes: 8192,
                        writable_layer_inodes: 4,
                    };
                    (id.to_string(), u)
                })
                .collect(),
            writable_layer_mountpoint: "/var/lib/vmlet".into(),
            host: None,
            network: Vec::new(),
        }
    }

    #[test]
    fn the_first_interface_is_the_default() {
        assert_eq!(network(5, &[]), None);
        let eth = |name: &str, rx: u64| InterfaceUsage {
            name: name.into(),
            rx_bytes: rx,
            tx_errors: 2,
            ..Default::default()
        };
        let n = network(5, &[eth("eth0", 100), eth("net1", 7)]).unwrap();
        assert_eq!(n.timestamp, 5);
        let d = n.default_interface.unwrap();
        assert_eq!((d.name.as_str(), d.rx_bytes.unwrap().value), ("eth0", 100));
        assert_eq!(d.tx_errors.unwrap().value, 2);
        assert_eq!(n.interfaces.len(), 1);
        assert_eq!(n.interfaces[0].name, "net1");
    }

    #[test]
    fn filters() {
        let c = container("abc1", "pod1", ContainerState::Running);
        let mut f = proto::ContainerStatsFilter::default();
        assert!(container_matches(&c, &f));
        f.id = "abc".into();
        f.pod_sandbox_id = "pod".into();
        assert!(container_matches(&c, &f));
        f.label_selector.insert("app".into(), "db".into());
        assert!(!container_matches(&c, &f));
        f.label_selector.insert("app".into(), "web".into());
        assert!(container_matches(&c, &f));
        f.pod_sandbox_id = "pod2".into();
        assert!(!container_matches(&c, &f));
        f.pod_sandbox_id.clear();
        f.id = "abd".into();
        assert!(!container_matches(&c, &f));

        let mut p = PodInfo {
            id: "pod1".into(),
            config: PodConfig::default(),
            state: PodState::Ready,
            created_at_ns: 0,
            verbose_json: String::new(),
            ips: Vec::new(),
        };
        p.config.labels.insert("tier".into(), "front".into());
        let mut f = proto::PodSandboxStatsFilter {
            id: "pod".into(),
            ..Default::default()
        };
        assert!(pod_matches(&p, &f));
        f.label_selector.insert("tier".into(), "back".into());
        assert!(!pod_matches(&p, &f));
        f.label_selector.clear();
        f.id = "pod2".into();
        assert!(!pod_matches(&p, &f));
    }

    #[test]
    fn container_shapes() {
        let rates = Rates::default();
        let c = container("c1", "p1", ContainerState::Running);
        let s = rates.container(&c, Some(&usage(&["c1"], 2_000_000, SEC)));
        let a = s.attributes.unwrap();
        assert_eq!((a.id.as_str(), a.labels["app"].as_str()), ("c1", "web"));
        assert_eq!(a.metadata.unwrap().attempt, 2);
        assert_eq!(a.annotations["note"], "x");
        let cpu = s.cpu.unwrap();
        assert_eq!(cpu.usage_core_nano_seconds.unwrap().value, 2_000_000);
        assert_eq!(cpu.usage_nano_cores, None, "no rate on the first sample");
        let mem = s.memory.unwrap();
        assert_eq!(mem.working_set_bytes.unwrap().value, 30 << 20);
        assert_eq!(mem.usage_bytes.unwrap().value, 40 << 20);
        let fs = s.writable_layer.unwrap();
        assert_eq!(fs.used_bytes.unwrap().value, 8192);
        assert_eq!(fs.inodes_used.unwrap().value, 4);
        assert_eq!(fs.fs_id.unwrap().mountpoint, "/var/lib/vmlet");
        // A tenth of a core over the next second.
        let s = rates.container(&c, Some(&usage(&["c1"], 102_000_000, 2 * SEC)));
        assert_eq!(s.cpu.unwrap().usage_nano_cores.unwrap().value, 100_000_000);

        // Exited: attributes and writable layer, no CPU or memory.
        let done = container("c2", "p1", ContainerState::Exited);
        let s = rates.container(&done, Some(&usage(&["c2"], 5, SEC)));
        assert!(s.cpu.is_none() && s.memory.is_none());
        assert!(s.writable_layer.is_some() && s.attributes.is_some());
        // Its pod's guest could not be asked: attributes only.
        let s = rates.container(&c, None);
        assert!(s.cpu.is_none() && s.writable_layer.is_none());
        assert_eq!(s.attributes.unwrap().id, "c1");
    }

    #[test]
    fn pod_shape() {
        let rates = Rates::default();
        let mut p = PodInfo {
            id: "p1".into(),
            config: PodConfig::default(),
            state: PodState::Ready,
            created_at_ns: 0,
            verbose_json: String::new(),
            ips: Vec::new(),
        };
        p.config.metadata.name = "web".into();
        let u = usage(&["c1", "c2"], 1_000, SEC);
        let s = rates.pod(&p, &u, vec![proto::ContainerStats::default()]);
        assert_eq!(s.attributes.unwrap().metadata.unwrap().name, "web");
        let linux = s.linux.unwrap();
        let cpu = linux.cpu.unwrap();
        assert_eq!(cpu.usage_core_nano_seconds.unwrap().value, 2_000);
        assert!(cpu.usage_nano_cores.is_none());
        let mem = linux.memory.unwrap();
        assert_eq!(mem.working_set_bytes.unwrap().value, 300 << 20);
        assert_eq!(mem.available_bytes.unwrap().value, 200 << 20);
        assert_eq!(linux.process.unwrap().process_count.unwrap().value, 6);
        assert_eq!(linux.containers.len(), 1);
        // The pod's rate is its own, apart from its containers'.
        let u = usage(&[], 500_001_000, 2 * SEC);
        let s = rates.pod(&p, &u, Vec::new());
        let cpu = s.linux.unwrap().cpu.unwrap();
        assert_eq!(cpu.usage_nano_cores.unwrap().value, 1_000_000_000);
    }

    #[test]
    fn a_pod_with_a_host_cgroup_reports_what_it_costs_the_host() {
        let rates = Rates::default();
        let p = PodInfo {
            id: "p1".into(),
            config: PodConfig::default(),
            state: PodState::Ready,
            created_at_ns: 0,
            verbose_json: String::new(),
            ips: Vec::new(),
        };
        let mut u = usage(&["c1"], 1_000, SEC);
        u.host = Some(HostUsage {
            cpu_usage_ns: 7_000,
            memory_usage_bytes: 400 << 20,
            working_set_bytes: 350 << 20,
            rss_bytes: 320 << 20,
            page_faults: 9,
            major_page_faults: 1,
            available_bytes: None,
        });
        let linux = rates.pod(&p, &u, Vec::new()).linux.unwrap();
        assert_eq!(
            linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value,
            7_000
        );
        let mem = linux.memory.unwrap();
        assert_eq!(mem.working_set_bytes.unwrap().value, 350 << 20);
        assert_eq!(mem.usage_bytes.unwrap().value, 400 << 20);
        assert_eq!(mem.rss_bytes.unwrap().value, 320 << 20);
        assert_eq!(mem.major_page_faults.unwrap().value, 1);
        assert!(mem.available_bytes.is_none());
        // The rate follows the host's counter.
        u.host.as_mut().unwrap().cpu_usage_ns = 500_007_000;
        u.timestamp_ns = 2 * SEC;
        let cpu = rates.pod(&p, &u, Vec::new()).linux.unwrap().cpu.unwrap();
        assert_eq!(cpu.usage_nano_cores.unwrap().value, 500_000_000);
    }
}
