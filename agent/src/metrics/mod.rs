//! vmletd's figures for Prometheus (`[metrics]`): what its parts count as they work
//! ([`Metrics`], handed to them as `Arc<Metrics>`), what is read at scrape time
//! ([`Scraped`]: pods, containers, warm pools and each pod's VMM), the tower layer that
//! counts and times CRI calls ([`grpc`]), and the HTTP endpoint ([`server`]).
//!
//! Every label value is bounded: CRI method names from a fixed list, gRPC codes,
//! fixed phase and state names, handler names from the configuration, device names
//! the VMM makes, and pod identity (ID, name, namespace) only on per-pod series.
//!
//! Series (all prefixed `vmlet_`):
//! - `cri_requests_total{method,code}`, `cri_request_duration_seconds{method}`;
//! - `pod_start_phase_duration_seconds{vm,phase}` (`vm`: `warm` or `fresh`; `phase`:
//!   `queue`, `boot`, `network`, `configure`), `pod_starts_total{vm}`;
//! - `vm_boots_total{result}`;
//! - `image_pulls_total{result}`, `image_pull_bytes_total`;
//! - at scrape time: `pods{state}`, `containers{state}`, `warm_pool_target{handler}`,
//!   `warm_pool_ready{handler}`, `warm_pool_booting{handler}`,
//!   `warm_pool_failures_total{handler}`;
//! - at scrape time, from each ready pod's VMM (labels `pod_id`, `pod_name`,
//!   `pod_namespace`): `vmm_up`, `vmm_exits_total{kind}`,
//!   `vmm_queue_notifications_total{device}`, `vmm_block_{read,write}_bytes_total` and
//!   `vmm_block_{read,write,flush}_ops_total{drive}`,
//!   `vmm_net_{rx,tx}_{bytes,packets}_total{interface}`,
//!   `vmm_vsock_connections_total{from}`.

pub mod grpc;
mod scraped;
pub mod server;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use scraped::{PodIdentity, Scraped, VmmFigures, WarmPoolFigures};

/// The prefix of every series.
const PREFIX: &str = "vmlet";

/// Upper bounds of the CRI call latency buckets, in seconds.
const CALL_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds of the pod start phase buckets, in seconds.
const PHASE_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A step of a pod's start, timed apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a boot permit (`vm.max_concurrent_boots`).
    Queue,
    /// Booting until the guest agent answers.
    Boot,
    /// Restoring from a template until the guest agent answers and is told so.
    Restore,
    /// CNI ADD.
    Network,
    /// ConfigureGuest (hostname, network, DNS, /etc/hosts).
    Configure,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Boot => "boot",
            Phase::Restore => "restore",
            Phase::Network => "network",
            Phase::Configure => "configure",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    vm: &'static str,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    vm: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn result(ok: bool) -> ResultLabels {
    ResultLabels {
        result: if ok { "ok" } else { "failed" },
    }
}

fn vm_kind(warm: bool) -> &'static str {
    if warm {
        "warm"
    } else {
        "fresh"
    }
}

/// What vmletd counts as it works, and the registry that holds it. Cheap to update
/// (atomics, and a short lock the first time a label set is seen); kept even when no
/// endpoint serves it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cri_requests: Family<CallLabels, Counter>,
    cri_duration: Histograms<MethodLabels>,
    start_phases: Histograms<PhaseLabels>,
    pod_starts: Family<VmLabels, Counter>,
    boots: Family<ResultLabels, Counter>,
    image_pulls: Family<ResultLabels, Counter>,
    image_pull_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The families, registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let cri_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "cri_requests",
            "CRI calls by method and gRPC code",
            cri_requests.clone(),
        );
        let cri_duration: Histograms<MethodLabels> =
            Family::new_with_constructor(|| Histogram::new(CALL_BUCKETS));
        registry.register_with_unit(
            "cri_request_duration",
            "How long CRI calls took until their response began, by method",
            Unit::Seconds,
            cri_duration.clone(),
        );
        let start_phases: Histograms<PhaseLabels> =
            Family::new_with_constructor(|| Histogram::new(PHASE_BUCKETS));
        registry.register_with_unit(
            "pod_start_phase_duration",
            "Steps of the pods that started, by VM (warm from the pool, or fresh) and phase",
            Unit::Seconds,
            start_phases.clone(),
        );
        let pod_starts = Family::<VmLabels, Counter>::default();
        registry.register(
            "pod_starts",
            "Pods started, by VM (warm from the pool, or fresh)",
            pod_starts.clone(),
        );
        let boots = Family::<ResultLabels, Counter>::default();
        registry.register(
            "vm_boots",
            "Guest boots (pods' and the warm pools'), by result",
            boots.clone(),
        );
        let image_pulls = Family::<ResultLabels, Counter>::default();
        registry.register("image_pulls", "Image pulls by result", image_pulls.clone());
        let image_pull_bytes = Counter::default();
        registry.register_with_unit(
            "image_pull",
            "Bytes image pulls downloaded (blobs already present are not counted)",
            Unit::Bytes,
            image_pull_bytes.clone(),
        );
        // Shown at zero before the first event.
        for ok in [true, false] {
            boots.get_or_create_owned(&result(ok));
            image_pulls.get_or_create_owned(&result(ok));
        }
        for warm in [true, false] {
            pod_starts.get_or_create_owned(&VmLabels { vm: vm_kind(warm) });
        }
        Metrics {
            registry,
            cri_requests,
            cri_duration,
            start_phases,
            pod_starts,
            boots,
            image_pulls,
            image_pull_bytes,
        }
    }

    /// A CRI call answered with gRPC `code` after `took`.
    pub fn cri_call(&self, method: &'static str, code: &'static str, took: Duration) {
        self.cri_requests
            .get_or_create(&CallLabels { method, code })
            .inc();
        self.cri_duration
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    /// A pod started, in a warm VM or a fresh one, with how long its phases took.
    pub fn pod_started(&self, warm: bool, phases: &[(Phase, Duration)]) {
        let vm = vm_kind(warm);
        self.pod_starts.get_or_create(&VmLabels { vm }).inc();
        for (phase, took) in phases {
            self.start_phases
                .get_or_create(&PhaseLabels {
                    vm,
                    phase: phase.name(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// A guest boot ended (`ok`: its agent answered).
    pub fn boot(&self, ok: bool) {
        self.boots.get_or_create(&result(ok)).inc();
    }

    /// An image pull ended, having downloaded `bytes`.
    pub fn image_pull(&self, ok: bool, bytes: u64) {
        self.image_pulls.get_or_create(&result(ok)).inc();
        self.image_pull_bytes.inc_by(bytes);
    }

    /// The exposition in OpenMetrics text: the families above, then `scraped`.
    pub fn encode(&self, scraped: Scraped) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry)?;
        let mut now = Registry::with_prefix(PREFIX);
        now.register_collector(Box::new(scraped));
        text::encode_registry(&mut out, &now)?;
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels as printed), if present.
    pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split(' ').next()?.parse().ok())
    }

    #[test]
    fn counts_and_times_what_it_is_told() {
        let m = Metrics::new();
        m.cri_call("RunPodSandbox", "OK", Duration::from_millis(300));
        m.cri_call("RunPodSandbox", "OK", Duration::from_millis(30));
        m.cri_call("StopPodSandbox", "NotFound", Duration::from_millis(1));
        m.pod_started(
            false,
            &[
                (Phase::Queue, Duration::ZERO),
                (Phase::Boot, Duration::from_secs(2)),
            ],
        );
        m.boot(true);
        m.image_pull(true, 1000);
        m.image_pull(false, 24);
        let text = m.encode(Scraped::default()).unwrap();
        for (series, want) in [
            (
                r#"vmlet_cri_requests_total{method="RunPodSandbox",code="OK"}"#,
                2.0,
            ),
            (
                r#"vmlet_cri_requests_total{method="StopPodSandbox",code="NotFound"}"#,
                1.0,
            ),
            (
                r#"vmlet_cri_request_duration_seconds_count{method="RunPodSandbox"}"#,
                2.0,
            ),
            (
                r#"vmlet_cri_request_duration_seconds_bucket{le="0.05",method="RunPodSandbox"}"#,
                1.0,
            ),
            (
                r#"vmlet_pod_start_phase_duration_seconds_sum{vm="fresh",phase="boot"}"#,
                2.0,
            ),
            (r#"vmlet_pod_starts_total{vm="fresh"}"#, 1.0),
            (r#"vmlet_pod_starts_total{vm="warm"}"#, 0.0),
            (r#"vmlet_vm_boots_total{result="ok"}"#, 1.0),
            (r#"vmlet_vm_boots_total{result="failed"}"#, 0.0),
            (r#"vmlet_image_pulls_total{result="ok"}"#, 1.0),
            (r#"vmlet_image_pulls_total{result="failed"}"#, 1.0),
            ("vmlet_image_pull_bytes_total", 1024.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE vmlet_cri_requests counter\n"),
            "{text}"
        );
    }
}
