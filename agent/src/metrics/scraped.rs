//! Figures read at scrape time rather than counted as they happen: how many pods and
//! containers are in each state, the warm pools, and each pod's VMM. The runtime
//! gathers them ([`Scraped`]); encoding them is this module's job.
//!
//! What a VMM reports names its devices and exit kinds: a VMM is jailed but runs
//! guest-facing code, so only short names of `[A-Za-z0-9_-]` become label values, at
//! most [`MAX_KEYS`] of each kind per pod.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use vmlet_vmm_api::control::{BlockCounters, CountersReply, NetCounters};

/// Most exit kinds, drives or cards of one pod shown.
const MAX_KEYS: usize = 32;
/// Longest device or exit kind name shown.
const MAX_KEY_LEN: usize = 32;

/// The figures of one scrape.
#[derive(Debug, Default, Clone)]
pub struct Scraped {
    /// Pods by state (`ready`, `notready`), every state listed.
    pub pods: Vec<(&'static str, u64)>,
    /// Containers by state (`created`, `running`, `exited`, `unknown`), every state
    /// listed.
    pub containers: Vec<(&'static str, u64)>,
    /// Each RuntimeClass handler's warm pool.
    pub warm_pools: Vec<WarmPoolFigures>,
    /// Each ready pod's VMM.
    pub vmms: Vec<VmmFigures>,
}

/// What a pod's VMM reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmFigures {
    /// The pod.
    pub pod: PodIdentity,
    /// Its counters; `None` when the VMM did not answer in time.
    pub counters: Option<CountersReply>,
}

/// One warm pool's state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WarmPoolFigures {
    /// Its RuntimeClass handler ("" the default).
    pub handler: String,
    /// VMs it keeps ready.
    pub target: u64,
    /// VMs ready now.
    pub ready: u64,
    /// Whether it boots one now.
    pub booting: bool,
    /// Warm VMs that failed a pod (dead, silent, or a step of adoption failed).
    pub failed: u64,
}

/// A pod's identity on its series: bounded by the pods on the node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod sandbox ID.
    pub id: String,
    /// Its Kubernetes name.
    pub name: String,
    /// Its Kubernetes namespace.
    pub namespace: String,
}

/// A gauge family with one label: `(label value, value)` pairs.
fn gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, n) in values {
        let labels = [(label, value)];
        metric.encode_family(&labels)?.encode_gauge(&n)?;
    }
    Ok(())
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauges(
            &mut encoder,
            "pods",
            "Pod sandboxes by state.",
            "state",
            self.pods.iter().copied(),
        )?;
        gauges(
            &mut encoder,
            "containers",
            "Containers by state.",
            "state",
            self.containers.iter().copied(),
        )?;
        let pools = &self.warm_pools;
        gauges(
            &mut encoder,
            "warm_pool_target",
            "VMs each warm pool keeps ready, by RuntimeClass handler (\"\" the default).",
            "handler",
            pools.iter().map(|p| (p.handler.as_str(), p.target)),
        )?;
        gauges(
            &mut encoder,
            "warm_pool_ready",
            "VMs ready in each warm pool.",
            "handler",
            pools.iter().map(|p| (p.handler.as_str(), p.ready)),
        )?;
        gauges(
            &mut encoder,
            "warm_pool_booting",
            "Whether each warm pool boots a VM now (1) or not (0).",
            "handler",
            pools
                .iter()
                .map(|p| (p.handler.as_str(), u64::from(p.booting))),
        )?;
        let mut failed = encoder.encode_descriptor(
            "warm_pool_failures",
            "Warm VMs that failed a pod (dead, silent, or a step of adoption failed).",
            None,
            MetricType::Counter,
        )?;
        for p in pools {
            let labels = [("handler", p.handler.as_str())];
            ConstCounter::new(p.failed).encode(failed.encode_family(&labels)?)?;
        }
        self.encode_vmms(&mut encoder)
    }
}

/// The entries of `map` whose names may be label values (see the module's note).
fn bounded<V>(map: &BTreeMap<String, V>) -> impl Iterator<Item = (&str, &V)> {
    map.iter()
        .filter(|(k, _)| {
            !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .take(MAX_KEYS)
        .map(|(k, v)| (k.as_str(), v))
}

/// One sample of a per-pod family: the pod, the value of the family's own label, the
/// value.
type PodRow<'a> = (&'a PodIdentity, &'a str, u64);

/// A per-pod counter family: labels `pod_id`, `pod_name`, `pod_namespace` and
/// `label`.
fn pod_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = PodRow<'a>>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (pod, value, n) in rows {
        let labels = [
            ("pod_id", pod.id.as_str()),
            ("pod_name", pod.name.as_str()),
            ("pod_namespace", pod.namespace.as_str()),
            (label, value),
        ];
        ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A per-device series of a VMM: name, help, the field it shows.
type DeviceSeries<C> = (&'static str, &'static str, fn(&C) -> u64);

/// Block device series.
const BLOCK: [DeviceSeries<BlockCounters>; 5] = [
    (
        "vmm_block_read_bytes",
        "Bytes a pod's VMM read from each drive for its guest.",
        |b| b.read_bytes,
    ),
    (
        "vmm_block_write_bytes",
        "Bytes a pod's VMM wrote to each drive for its guest.",
        |b| b.write_bytes,
    ),
    (
        "vmm_block_read_ops",
        "Read requests of each drive of a pod.",
        |b| b.read_ops,
    ),
    (
        "vmm_block_write_ops",
        "Write requests of each drive of a pod.",
        |b| b.write_ops,
    ),
    (
        "vmm_block_flush_ops",
        "Flush requests of each drive of a pod.",
        |b| b.flush_ops,
    ),
];

/// Network card series.
const NET: [DeviceSeries<NetCounters>; 6] = [
    (
        "vmm_net_rx_bytes",
        "Bytes each network card of a pod handed to its guest.",
        |n| n.rx_bytes,
    ),
    (
        "vmm_net_rx_packets",
        "Frames each network card of a pod handed to its guest.",
        |n| n.rx_packets,
    ),
    (
        "vmm_net_tx_bytes",
        "Bytes the guest of a pod sent on each network card.",
        |n| n.tx_bytes,
    ),
    (
        "vmm_net_tx_packets",
        "Frames the guest of a pod sent on each network card.",
        |n| n.tx_packets,
    ),
    (
        "vmm_net_tx_dropped",
        "Frames the guest of a pod sent that its card dropped (malformed, or refused by the tap).",
        |n| n.tx_dropped,
    ),
    (
        "vmm_net_rx_dropped",
        "Frames for the guest of a pod dropped because its receive buffers were unusable.",
        |n| n.rx_dropped,
    ),
];

impl Scraped {
    /// The pods' VMM series.
    fn encode_vmms(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut up = encoder.encode_descriptor(
            "vmm_up",
            "Whether a ready pod's VMM reported its counters in time (1) or not (0).",
            None,
            MetricType::Gauge,
        )?;
        for v in &self.vmms {
            let labels = [
                ("pod_id", v.pod.id.as_str()),
                ("pod_name", v.pod.name.as_str()),
                ("pod_namespace", v.pod.namespace.as_str()),
            ];
            up.encode_family(&labels)?
                .encode_gauge(&u64::from(v.counters.is_some()))?;
        }
        let answered: Vec<(&PodIdentity, &CountersReply)> = self
            .vmms
            .iter()
            .filter_map(|v| Some((&v.pod, v.counters.as_ref()?)))
            .collect();
        pod_counters(
            encoder,
            "vmm_exits",
            "vCPU exits to a pod's VMM, by kind (io_in, io_out, mmio_read, mmio_write, \
             interrupted, other).",
            "kind",
            answered
                .iter()
                .flat_map(|(pod, c)| bounded(&c.exits).map(move |(k, n)| (*pod, k, *n))),
        )?;
        pod_counters(
            encoder,
            "vmm_queue_notifications",
            "virtio queue notifications (guest kicks) of each device of a pod: its \
             drives, network cards (net0, ...) and vsock.",
            "device",
            answered.iter().flat_map(|(pod, c)| {
                let block = bounded(&c.block).map(move |(k, b)| (*pod, k, b.queue_notifications));
                let net = bounded(&c.net).map(move |(k, n)| (*pod, k, n.queue_notifications));
                let vsock = c.vsock.map(|v| (*pod, "vsock", v.queue_notifications));
                block.chain(net).chain(vsock)
            }),
        )?;
        for (name, help, field) in BLOCK {
            pod_counters(
                encoder,
                name,
                help,
                "drive",
                answered
                    .iter()
                    .flat_map(|(pod, c)| bounded(&c.block).map(move |(k, b)| (*pod, k, field(b)))),
            )?;
        }
        for (name, help, field) in NET {
            pod_counters(
                encoder,
                name,
                help,
                "interface",
                answered
                    .iter()
                    .flat_map(|(pod, c)| bounded(&c.net).map(move |(k, n)| (*pod, k, field(n)))),
            )?;
        }
        pod_counters(
            encoder,
            "vmm_vsock_connections",
            "vsock connections of a pod, by who opened them (host or guest).",
            "from",
            answered.iter().flat_map(|(pod, c)| {
                c.vsock.into_iter().flat_map(move |v| {
                    [
                        (*pod, "host", v.connections_from_host),
                        (*pod, "guest", v.connections_from_guest),
                    ]
                })
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::sample;
    use crate::metrics::Metrics;

    #[test]
    fn scraped_figures_are_encoded_with_their_labels() {
        let scraped = Scraped {
            pods: vec![("ready", 2), ("notready", 1)],
            containers: vec![("created", 0), ("running", 3)],
            warm_pools: vec![WarmPoolFigures {
                handler: String::new(),
                target: 1,
                ready: 1,
                booting: false,
                failed: 4,
            }],
            ..Scraped::default()
        };
        let text = Metrics::new().encode(scraped).unwrap();
        for (series, want) in [
            (r#"vmlet_pods{state="ready"}"#, 2.0),
            (r#"vmlet_pods{state="notready"}"#, 1.0),
            (r#"vmlet_containers{state="running"}"#, 3.0),
            (r#"vmlet_containers{state="created"}"#, 0.0),
            (r#"vmlet_warm_pool_target{handler=""}"#, 1.0),
            (r#"vmlet_warm_pool_ready{handler=""}"#, 1.0),
            (r#"vmlet_warm_pool_booting{handler=""}"#, 0.0),
            (r#"vmlet_warm_pool_failures_total{handler=""}"#, 4.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
    }

    #[test]
    fn vmm_counters_become_per_pod_series_with_bounded_labels() {
        let pod = |id: &str| PodIdentity {
            id: id.into(),
            name: format!("name-{id}"),
            namespace: "ns".into(),
        };
        let mut c = CountersReply::default();
        c.exits.insert("io_out".into(), 9);
        c.exits.insert("bad\"kind".into(), 1);
        c.exits.insert("x".repeat(MAX_KEY_LEN + 1), 1);
        for i in 0..(MAX_KEYS + 5) {
            c.block.insert(
                format!("d{i:03}"),
                BlockCounters {
                    read_bytes: 512,
                    ..BlockCounters::default()
                },
            );
        }
        c.net.insert(
            "net0".into(),
            NetCounters {
                tx_packets: 3,
                queue_notifications: 2,
                ..NetCounters::default()
            },
        );
        c.vsock = Some(vmlet_vmm_api::control::VsockCounters {
            connections_from_host: 4,
            ..Default::default()
        });
        let scraped = Scraped {
            vmms: vec![
                VmmFigures {
                    pod: pod("a"),
                    counters: Some(c),
                },
                VmmFigures {
                    pod: pod("b"),
                    counters: None,
                },
            ],
            ..Scraped::default()
        };
        let text = Metrics::new().encode(scraped).unwrap();
        let labels = r#"pod_id="a",pod_name="name-a",pod_namespace="ns""#;
        for (series, want) in [
            (format!("vmlet_vmm_up{{{labels}}}"), 1.0),
            (
                r#"vmlet_vmm_up{pod_id="b",pod_name="name-b",pod_namespace="ns"}"#.to_owned(),
                0.0,
            ),
            (
                format!("vmlet_vmm_exits_total{{{labels},kind=\"io_out\"}}"),
                9.0,
            ),
            (
                format!("vmlet_vmm_block_read_bytes_total{{{labels},drive=\"d000\"}}"),
                512.0,
            ),
            (
                format!("vmlet_vmm_net_tx_packets_total{{{labels},interface=\"net0\"}}"),
                3.0,
            ),
            (
                format!("vmlet_vmm_queue_notifications_total{{{labels},device=\"net0\"}}"),
                2.0,
            ),
            (
                format!("vmlet_vmm_vsock_connections_total{{{labels},from=\"host\"}}"),
                4.0,
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
        }
        assert!(!text.contains("bad"), "{text}");
        assert!(!text.contains("xxxx"), "{text}");
        let drives = text
            .lines()
            .filter(|l| l.starts_with("vmlet_vmm_block_read_bytes_total{"))
            .count();
        assert_eq!(drives, MAX_KEYS);
        assert!(!text.contains(r#"pod_id="b",pod_name="name-b",pod_namespace="ns",kind"#));
    }
}
