//! Figures read at scrape time rather than counted as they happen: how many pods and
//! containers are in each state, the warm pools, and each pod's VMM. The runtime
//! gathers them ([`Scraped`]); encoding them is this module's job.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

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
        Ok(())
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
}
