//! ListMetricDescriptors and ListPodSandboxMetrics: a pod's and its containers' figures
//! under cAdvisor's names and labels, which the kubelet serves on `/metrics/cadvisor`
//! when it takes pod stats from the runtime (`PodAndContainerStatsFromCRI`). The pod's
//! own series carry `container=""`, as cAdvisor's pod cgroup does; its traffic is the
//! pod's (a VM has one network). CRI values are whole numbers, so seconds are whole
//! seconds.

use super::backend::{ContainerInfo, ContainerState, InterfaceUsage, PodInfo, PodUsage};
use crate::proto;

/// Label keys, sorted as the CRI asks (values follow the same order).
const LABELS: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];
/// The network series' label keys.
const NET_LABELS: &[&str] = &[
    "container",
    "id",
    "image",
    "interface",
    "name",
    "namespace",
    "pod",
];

const COUNTER: proto::MetricType = proto::MetricType::Counter;
const GAUGE: proto::MetricType = proto::MetricType::Gauge;

/// Every series: name, help, and whether it is per network interface.
const SERIES: &[(&str, &str, bool)] = &[
    (CPU, "Cumulative cpu time consumed in seconds.", false),
    (
        MEMORY,
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
    ),
    (WORKING_SET, "Current working set in bytes.", false),
    (RSS, "Size of RSS in bytes.", false),
    (
        PROCESSES,
        "Number of processes running inside the container.",
        false,
    ),
    (
        FS_USAGE,
        "Number of bytes that are consumed by the container on this filesystem.",
        false,
    ),
    (
        START_TIME,
        "Start time of the container since unix epoch in seconds.",
        false,
    ),
    (
        LAST_SEEN,
        "Last time a container was seen by the exporter.",
        false,
    ),
    (RX_BYTES, "Cumulative count of bytes received.", true),
    (RX_PACKETS, "Cumulative count of packets received.", true),
    (
        RX_ERRORS,
        "Cumulative count of errors encountered while receiving.",
        true,
    ),
    (TX_BYTES, "Cumulative count of bytes transmitted.", true),
    (TX_PACKETS, "Cumulative count of packets transmitted.", true),
    (
        TX_ERRORS,
        "Cumulative count of errors encountered while transmitting.",
        true,
    ),
];

const CPU: &str = "container_cpu_usage_seconds_total";
const MEMORY: &str = "container_memory_usage_bytes";
const WORKING_SET: &str = "container_memory_working_set_bytes";
const RSS: &str = "container_memory_rss";
const PROCESSES: &str = "container_processes";
const FS_USAGE: &str = "container_fs_usage_bytes";
const START_TIME: &str = "container_start_time_seconds";
const LAST_SEEN: &str = "container_last_seen";
const RX_BYTES: &str = "container_network_receive_bytes_total";
const RX_PACKETS: &str = "container_network_receive_packets_total";
const RX_ERRORS: &str = "container_network_receive_errors_total";
const TX_BYTES: &str = "container_network_transmit_bytes_total";
const TX_PACKETS: &str = "container_network_transmit_packets_total";
const TX_ERRORS: &str = "container_network_transmit_errors_total";

const NS_PER_SEC: u64 = 1_000_000_000;

/// What ListMetricDescriptors answers.
pub fn descriptors() -> Vec<proto::MetricDescriptor> {
    SERIES
        .iter()
        .map(|(name, help, net)| proto::MetricDescriptor {
            name: (*name).to_owned(),
            help: (*help).to_owned(),
            label_keys: if *net { NET_LABELS } else { LABELS }
                .iter()
                .map(|k| (*k).to_owned())
                .collect(),
        })
        .collect()
}

fn metric(name: &str, kind: proto::MetricType, labels: &[String], v: u64) -> proto::Metric {
    proto::Metric {
        name: name.to_owned(),
        // Gathered live.
        timestamp: 0,
        metric_type: kind as i32,
        label_values: labels.to_vec(),
        value: Some(proto::UInt64Value { value: v }),
    }
}

fn secs(ns: i64) -> u64 {
    u64::try_from(ns).unwrap_or(0) / NS_PER_SEC
}

/// A ready pod's series and its running containers' (`containers` may hold other
/// pods' too), from `usage`, its figures read now.
pub fn pod(
    p: &PodInfo,
    containers: &[ContainerInfo],
    usage: &PodUsage,
) -> proto::PodSandboxMetrics {
    let m = &p.config.metadata;
    // container, id, image, name, namespace, pod
    let labels = [
        String::new(),
        p.id.clone(),
        String::new(),
        m.name.clone(),
        m.namespace.clone(),
        m.name.clone(),
    ];
    let (cpu_ns, memory, working_set) = match usage.host {
        Some(h) => (h.cpu_usage_ns, h.memory_usage_bytes, h.working_set_bytes),
        None => (
            usage.cpu_usage_ns,
            usage.memory_usage_bytes,
            usage.memory_usage_bytes,
        ),
    };
    let mut metrics = vec![
        metric(CPU, COUNTER, &labels, cpu_ns / NS_PER_SEC),
        metric(MEMORY, GAUGE, &labels, memory),
        metric(WORKING_SET, GAUGE, &labels, working_set),
        metric(LAST_SEEN, GAUGE, &labels, secs(usage.timestamp_ns)),
    ];
    if let Some(h) = usage.host {
        metrics.push(metric(RSS, GAUGE, &labels, h.rss_bytes));
    }
    for i in &usage.network {
        metrics.extend(network(&labels, i));
    }
    let container_metrics = containers
        .iter()
        .filter(|c| c.pod_id == p.id && c.state == ContainerState::Running)
        .filter_map(|c| {
            let u = usage.containers.get(&c.id)?;
            let labels = [
                c.config.name.clone(),
                c.id.clone(),
                c.config.image.clone(),
                c.config.name.clone(),
                m.namespace.clone(),
                m.name.clone(),
            ];
            Some(proto::ContainerMetrics {
                container_id: c.id.clone(),
                metrics: vec![
                    metric(CPU, COUNTER, &labels, u.cpu_usage_ns / NS_PER_SEC),
                    metric(MEMORY, GAUGE, &labels, u.memory_usage_bytes),
                    metric(WORKING_SET, GAUGE, &labels, u.memory_working_set_bytes),
                    metric(PROCESSES, GAUGE, &labels, u.pids),
                    metric(FS_USAGE, GAUGE, &labels, u.writable_layer_bytes),
                    metric(START_TIME, GAUGE, &labels, secs(c.started_at_ns)),
                    metric(LAST_SEEN, GAUGE, &labels, secs(u.timestamp_ns)),
                ],
            })
        })
        .collect();
    proto::PodSandboxMetrics {
        pod_sandbox_id: p.id.clone(),
        metrics,
        container_metrics,
    }
}

/// The series of one interface: the pod's labels with `interface` in its sorted place.
fn network(labels: &[String; 6], i: &InterfaceUsage) -> Vec<proto::Metric> {
    let [container, id, image, name, namespace, pod] = labels.clone();
    let l = [container, id, image, i.name.clone(), name, namespace, pod];
    vec![
        metric(RX_BYTES, COUNTER, &l, i.rx_bytes),
        metric(RX_PACKETS, COUNTER, &l, i.rx_packets),
        metric(RX_ERRORS, COUNTER, &l, i.rx_errors),
        metric(TX_BYTES, COUNTER, &l, i.tx_bytes),
        metric(TX_PACKETS, COUNTER, &l, i.tx_packets),
        metric(TX_ERRORS, COUNTER, &l, i.tx_errors),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::{
        ContainerConfig, ContainerUsage, HostUsage, PodConfig, PodMetadata, PodState,
    };

    fn find<'a>(ms: &'a [proto::Metric], name: &str) -> &'a proto::Metric {
        ms.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn descriptors_name_every_series_once_with_sorted_keys() {
        let d = descriptors();
        let mut names: Vec<_> = d.iter().map(|d| d.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SERIES.len());
        for d in &d {
            let mut sorted = d.label_keys.clone();
            sorted.sort();
            assert_eq!(sorted, d.label_keys, "{}", d.name);
        }
    }

    #[test]
    fn a_pod_and_its_running_containers_have_their_series() {
        let info = PodInfo {
            id: "p1".into(),
            config: PodConfig {
                metadata: PodMetadata {
                    name: "web".into(),
                    namespace: "prod".into(),
                    uid: "u".into(),
                    attempt: 0,
                },
                ..Default::default()
            },
            state: PodState::Ready,
            created_at_ns: 0,
            verbose_json: String::new(),
            ips: Vec::new(),
        };
        let container = |id: &str, state| ContainerInfo {
            id: id.into(),
            pod_id: "p1".into(),
            config: ContainerConfig {
                name: format!("n-{id}"),
                image: "busybox:1".into(),
                ..Default::default()
            },
            image_id: String::new(),
            state,
            created_at_ns: 0,
            started_at_ns: 7 * NS_PER_SEC as i64,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: String::new(),
            verbose_json: String::new(),
            user: None,
        };
        let mut usage = PodUsage {
            timestamp_ns: 100 * NS_PER_SEC as i64,
            cpu_usage_ns: 1,
            host: Some(HostUsage {
                cpu_usage_ns: 3 * NS_PER_SEC + 5,
                memory_usage_bytes: 300,
                working_set_bytes: 200,
                rss_bytes: 100,
                ..Default::default()
            }),
            network: vec![InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 1000,
                tx_packets: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        usage.containers.insert(
            "c1".into(),
            ContainerUsage {
                cpu_usage_ns: 2 * NS_PER_SEC,
                pids: 3,
                writable_layer_bytes: 4096,
                ..Default::default()
            },
        );
        let cs = [
            container("c1", ContainerState::Running),
            container("c2", ContainerState::Exited),
        ];
        let got = pod(&info, &cs, &usage);
        assert_eq!(got.pod_sandbox_id, "p1");
        assert_eq!(find(&got.metrics, CPU).value.unwrap().value, 3);
        assert_eq!(find(&got.metrics, RSS).value.unwrap().value, 100);
        assert_eq!(
            find(&got.metrics, WORKING_SET).label_values,
            ["", "p1", "", "web", "prod", "web"]
        );
        let rx = find(&got.metrics, RX_BYTES);
        assert_eq!(rx.value.unwrap().value, 1000);
        assert_eq!(rx.metric_type, COUNTER as i32);
        assert_eq!(
            rx.label_values,
            ["", "p1", "", "eth0", "web", "prod", "web"]
        );
        assert_eq!(find(&got.metrics, TX_PACKETS).value.unwrap().value, 4);
        // Only the running container, with its own labels.
        assert_eq!(got.container_metrics.len(), 1);
        let c = &got.container_metrics[0];
        assert_eq!(c.container_id, "c1");
        let cpu = find(&c.metrics, CPU);
        assert_eq!(cpu.value.unwrap().value, 2);
        assert_eq!(
            cpu.label_values,
            ["n-c1", "c1", "busybox:1", "n-c1", "prod", "web"]
        );
        assert_eq!(find(&c.metrics, START_TIME).value.unwrap().value, 7);
        assert_eq!(find(&c.metrics, PROCESSES).value.unwrap().value, 3);
        // Every series is described, with as many keys as values.
        let d = descriptors();
        for m in got.metrics.iter().chain(&c.metrics) {
            let desc = d.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(desc.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
    }
}
