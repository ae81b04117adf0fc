//! A pod's network from start to end: its namespace, the CNI ADD that wires it, the tap
//! that carries the CNI interface into the VM, and the DEL and removal that undo it.
//!
//! The pod's record holds a [`PodNetRecord`] before anything is made, and every step is
//! idempotent, so a vmletd that died at any point is followed by one that can finish
//! or undo the job: DEL of an attachment that never got past ADD is harmless (plugins
//! must accept it), and removing a namespace that is gone succeeds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use vmlet_cri::runtime::PodConfig;
use vmlet_proto::agent as pb;

use super::cni::{Attachment, Cni, CniError, CniResult, Dns, NetworkConfig};
use super::netns::{Netns, NetnsError};
use super::tap::{connect_tap, make_tap, TapError};

/// The pod's interface inside its namespace (`CNI_IFNAME`), and in the guest.
pub const POD_IFNAME: &str = "eth0";
/// The tap in the pod's namespace that the VMM opens.
pub const TAP_NAME: &str = "tap0";
/// Kubernetes' traffic-shaping annotations (as containerd reads them).
const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// How pods get a network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The node's CNI configuration, carried into each VM.
    #[default]
    Cni,
    /// Loopback only.
    None,
}

/// The `[network]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// How pods get a network.
    pub mode: NetworkMode,
    /// CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories, in lookup order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Where pod network namespaces are pinned.
    pub netns_dir: PathBuf,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            mode: NetworkMode::Cni,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            netns_dir: "/run/netns".into(),
        }
    }
}

/// Why a pod's network could not be made or undone.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No usable CNI configuration or plugin: pods cannot be networked.
    #[error("pod networking is not ready: {0}")]
    NotReady(CniError),
    /// The namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A plugin failed.
    #[error("pod network: {0}")]
    Cni(CniError),
    /// The tap failed.
    #[error("connecting the pod's interface to its VM: {0}")]
    Tap(#[from] TapError),
    /// ADD gave the pod no interface with a MAC in its namespace.
    #[error("the CNI result has no {POD_IFNAME} interface in the pod's network namespace")]
    NoInterface,
    /// The blocking task running a step died (the daemon is shutting down).
    #[error("pod network step interrupted: {0}")]
    Interrupted(String),
    /// A traffic-shaping annotation that is not a quantity.
    #[error("annotation {key}: {value:?} is not a bandwidth (e.g. \"10M\")")]
    BadBandwidth {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

impl NetworkError {
    /// Whether the node, not the request or a plugin run, is at fault.
    pub fn is_not_ready(&self) -> bool {
        matches!(self, NetworkError::NotReady(_))
    }
}

/// A pod's network, persisted in its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodNetRecord {
    /// The pinned namespace.
    pub netns: PathBuf,
    /// The network configuration ADD ran with (DEL must use the same).
    pub network: NetworkConfig,
    /// Whether a DEL is owed: from before ADD until a DEL succeeded.
    pub attached: bool,
    /// ADD's result.
    pub result: Option<Value>,
    /// MAC of the pod's interface: the guest's MAC.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// The tap the VMM opens.
    pub tap: String,
    /// The MAC the guest's NIC boots with: the VM boots before ADD tells the pod's
    /// MAC (`mac`), which ConfigureGuest then gives the NIC. Empty in records of
    /// pods that booted with `mac`.
    #[serde(default)]
    pub guest_mac: String,
    /// How long namespace, ADD and tap took, in milliseconds.
    #[serde(default)]
    pub attach_ms: u64,
}

impl PodNetRecord {
    fn parsed(&self) -> Option<CniResult> {
        self.result.clone().and_then(|r| CniResult::parse(r).ok())
    }

    /// The pod's addresses without prefix length, IPv4 first (the CRI primary IP).
    pub fn ips(&self) -> Vec<String> {
        let Some(result) = self.parsed() else {
            return Vec::new();
        };
        let mut ips: Vec<IpAddr> = pod_addresses(&result)
            .iter()
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        ips.sort_by_key(|ip| !ip.is_ipv4());
        ips.iter().map(IpAddr::to_string).collect()
    }

    /// DNS settings the plugins returned.
    pub fn dns(&self) -> Dns {
        self.parsed().map(|r| r.dns).unwrap_or_default()
    }

    /// The guest's interface and routes, for ConfigureGuest.
    pub fn guest_config(&self) -> (Vec<pb::Interface>, Vec<pb::Route>) {
        let Some(result) = self.parsed() else {
            return (Vec::new(), Vec::new());
        };
        // The NIC is found by the MAC it booted with.
        let boot_mac = if self.guest_mac.is_empty() {
            &self.mac
        } else {
            &self.guest_mac
        };
        let interface = pb::Interface {
            mac: boot_mac.clone(),
            new_mac: self.mac.clone(),
            name: POD_IFNAME.to_owned(),
            addresses: pod_addresses(&result),
            mtu: self.mtu,
        };
        // A CNI route without a gateway goes through the interface's gateway of the
        // same family.
        let gateway = |v6: bool| {
            result
                .ips
                .iter()
                .filter_map(|ip| ip.gateway.clone())
                .find(|g| g.contains(':') == v6)
                .unwrap_or_default()
        };
        let routes = result
            .routes
            .iter()
            .map(|r| pb::Route {
                destination: r.dst.clone(),
                gateway: r.gw.clone().unwrap_or_else(|| gateway(r.dst.contains(':'))),
                interface_mac: boot_mac.clone(),
            })
            .collect();
        (vec![interface], routes)
    }
}

/// The addresses of a result that belong to the pod's interface (CIDR form).
fn pod_addresses(result: &CniResult) -> Vec<String> {
    result
        .ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => result
                .interfaces
                .get(i)
                .is_some_and(|itf| !itf.sandbox.is_empty()),
            None => true,
        })
        .map(|ip| ip.address.clone())
        .collect()
}

/// Pod networking of the node.
#[derive(Debug, Clone)]
pub struct PodNetworks {
    settings: NetworkSettings,
    cni: Cni,
}

impl PodNetworks {
    /// Networking per `settings`; CNI results are cached under `state_dir`.
    pub fn new(settings: NetworkSettings, state_dir: &Path) -> Self {
        let cni = Cni {
            bin_dirs: settings.cni_bin_dirs.clone(),
            cache_dir: state_dir.join("cni"),
        };
        Self { settings, cni }
    }

    /// How pods get a network.
    pub fn mode(&self) -> NetworkMode {
        self.settings.mode
    }

    /// The node's network configuration, with every plugin installed; the reason when
    /// there is none.
    pub fn ready(&self) -> Result<NetworkConfig, NetworkError> {
        let net = NetworkConfig::load_default(&self.settings.cni_conf_dir)
            .map_err(NetworkError::NotReady)?;
        self.cni
            .check_plugins(&net)
            .map_err(NetworkError::NotReady)?;
        Ok(net)
    }

    /// The network configuration a new pod gets now: `None` without pod networking,
    /// an error while pods cannot get one.
    pub fn current(&self) -> Result<Option<NetworkConfig>, NetworkError> {
        match self.settings.mode {
            NetworkMode::None => Ok(None),
            NetworkMode::Cni => self.ready().map(Some),
        }
    }

    /// The network record of a new pod on `network` (from [`PodNetworks::current`]),
    /// before anything is made. It owes a DEL from the start: see the module comment.
    pub fn plan(&self, pod_id: &str, network: NetworkConfig) -> PodNetRecord {
        PodNetRecord {
            netns: self.settings.netns_dir.join(format!("vmlet-{pod_id}")),
            network,
            attached: true,
            result: None,
            mac: String::new(),
            mtu: 0,
            tap: String::new(),
            guest_mac: String::new(),
            attach_ms: 0,
        }
    }

    /// Makes the namespace and, in it, the tap the VMM opens, and picks the MAC the
    /// guest boots with: all the VM needs, so that it can boot while ADD runs.
    /// Idempotent. Blocks.
    pub fn prepare(&self, pod_id: &str, rec: &mut PodNetRecord) -> Result<(), NetworkError> {
        let (dir, name) = split_netns_path(&rec.netns);
        let ns = Netns::create(dir, name)?;
        make_tap(&ns, TAP_NAME)?;
        rec.tap = TAP_NAME.to_owned();
        rec.guest_mac = boot_mac(pod_id);
        Ok(())
    }

    /// Makes the namespace, runs ADD, connects the tap. Blocks (runs plugins).
    pub fn attach(
        &self,
        pod_id: &str,
        config: &PodConfig,
        rec: &mut PodNetRecord,
    ) -> Result<(), NetworkError> {
        let start = std::time::Instant::now();
        let att = attachment(pod_id, rec, config)?;
        let (dir, name) = split_netns_path(&rec.netns);
        let ns = Netns::create(dir, name)?;
        let result = self
            .cni
            .add(&rec.network, &att)
            .map_err(NetworkError::Cni)?;
        if result.sandbox_interface(POD_IFNAME).is_none() {
            return Err(NetworkError::NoInterface);
        }
        let link = connect_tap(&ns, POD_IFNAME, TAP_NAME)?;
        rec.result = Some(result.raw);
        rec.mac = link.mac;
        rec.mtu = link.mtu;
        rec.tap = link.tap;
        rec.attach_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Runs DEL if one is owed. Idempotent. Blocks.
    pub fn detach(
        &self,
        pod_id: &str,
        config: &PodConfig,
        rec: &mut PodNetRecord,
    ) -> Result<(), NetworkError> {
        if !rec.attached {
            return Ok(());
        }
        // DEL must carry what ADD did; annotations that do not parse any more (they
        // cannot change) would only drop the bandwidth capability.
        let mut att = attachment(pod_id, rec, config).unwrap_or_else(|_| Attachment {
            container_id: pod_id.to_owned(),
            netns: rec.netns.clone(),
            ifname: POD_IFNAME.to_owned(),
            ..Default::default()
        });
        if Netns::open(&rec.netns).is_none() {
            // No namespace (never made, or gone): CNI_NETNS is optional for DEL, and
            // plugins then release what they hold outside it (addresses, rules).
            att.netns = PathBuf::new();
        }
        self.cni
            .del(&rec.network, &att)
            .map_err(NetworkError::Cni)?;
        rec.attached = false;
        Ok(())
    }

    /// DEL if owed, then the namespace (and the tap in it) removed. Idempotent. Blocks.
    pub fn remove(
        &self,
        pod_id: &str,
        config: &PodConfig,
        rec: &mut PodNetRecord,
    ) -> Result<(), NetworkError> {
        self.detach(pod_id, config, rec)?;
        Netns::at(&rec.netns).remove()?;
        Ok(())
    }

    /// As [`PodNetworks::remove`], for a pod that never ran (its RunPodSandbox failed,
    /// or a daemon died while making it): nobody will ask for it again, so a DEL that
    /// fails (a configuration that cannot even be parsed, say) is logged and the
    /// namespace removed anyway, as containerd does. Blocks.
    pub fn discard(
        &self,
        pod_id: &str,
        config: &PodConfig,
        rec: &mut PodNetRecord,
    ) -> Result<(), NetworkError> {
        if let Err(e) = self.detach(pod_id, config, rec) {
            tracing::warn!(
                pod = pod_id,
                "DEL for a pod that never ran failed; removing its namespace anyway: {e}"
            );
            rec.attached = false;
        }
        Netns::at(&rec.netns).remove()?;
        Ok(())
    }
}

/// A locally administered unicast MAC from the pod ID (hex): stable for a pod, and
/// only seen by the guest until ConfigureGuest gives it the pod's own.
fn boot_mac(pod_id: &str) -> String {
    let hex: String = pod_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .chain(std::iter::repeat('0'))
        .take(10)
        .collect();
    let mut mac = String::from("02");
    for pair in hex.as_bytes().chunks(2) {
        mac.push(':');
        mac.push_str(&String::from_utf8_lossy(pair));
    }
    mac.to_ascii_lowercase()
}

fn split_netns_path(path: &Path) -> (&Path, &str) {
    (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default(),
    )
}

/// What the plugins are told about the pod: the CNI_ARGS kubelet-era runtimes pass, and
/// the runtime capabilities (port mappings, DNS, bandwidth, annotations).
fn attachment(
    pod_id: &str,
    rec: &PodNetRecord,
    config: &PodConfig,
) -> Result<Attachment, NetworkError> {
    let m = &config.metadata;
    let args = vec![
        ("IgnoreUnknown".to_owned(), "1".to_owned()),
        ("K8S_POD_NAMESPACE".to_owned(), m.namespace.clone()),
        ("K8S_POD_NAME".to_owned(), m.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), pod_id.to_owned()),
        ("K8S_POD_UID".to_owned(), m.uid.clone()),
    ];
    let mut caps = Map::new();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .map(|p| {
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol,
                "hostIP": p.host_ip,
            })
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    let dns = &config.dns;
    if !dns.servers.is_empty() || !dns.searches.is_empty() || !dns.options.is_empty() {
        caps.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    if let Some(bw) = bandwidth(&config.annotations)? {
        caps.insert("bandwidth".into(), bw);
    }
    caps.insert(
        "io.kubernetes.cri.pod-annotations".into(),
        json!(config.annotations),
    );
    Ok(Attachment {
        container_id: pod_id.to_owned(),
        netns: rec.netns.clone(),
        ifname: POD_IFNAME.to_owned(),
        args,
        capabilities: caps,
    })
}

/// The `bandwidth` capability from the pod's traffic-shaping annotations (rates in
/// bits per second; the burst as large as the plugin allows, as containerd sets it).
fn bandwidth(annotations: &HashMap<String, String>) -> Result<Option<Value>, NetworkError> {
    let mut bw = Map::new();
    for (key, rate, burst) in [
        (INGRESS_ANNOTATION, "ingressRate", "ingressBurst"),
        (EGRESS_ANNOTATION, "egressRate", "egressBurst"),
    ] {
        let Some(value) = annotations.get(key) else {
            continue;
        };
        let bits = parse_quantity(value).ok_or_else(|| NetworkError::BadBandwidth {
            key,
            value: value.clone(),
        })?;
        bw.insert(rate.into(), json!(bits));
        bw.insert(burst.into(), json!(i32::MAX));
    }
    Ok((!bw.is_empty()).then_some(Value::Object(bw)))
}

/// A Kubernetes quantity such as `10M`, `512k` or `1Gi`, as an integer.
fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor).filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmlet_cri::runtime::{PodMetadata, PortMapping};

    fn record(result: Value) -> PodNetRecord {
        PodNetRecord {
            netns: "/run/netns/vmlet-x".into(),
            network: NetworkConfig {
                name: "n".into(),
                cni_version: "1.0.0".into(),
                plugins: Vec::new(),
                source: "/etc/cni/net.d/10-n.conflist".into(),
            },
            attached: true,
            result: Some(result),
            mac: "0a:58:0a:58:00:05".into(),
            mtu: 1500,
            tap: TAP_NAME.into(),
            guest_mac: boot_mac("5e1f"),
            attach_ms: 0,
        }
    }

    #[test]
    fn guest_config_from_a_bridge_result() {
        let rec = record(json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/run/netns/vmlet-x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
                {"address": "10.99.0.1/16", "interface": 0}
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "10.1.0.0/16", "gw": "10.88.0.9"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
        }));
        assert_eq!(rec.ips(), ["10.88.0.5", "fd00::5"]);
        let (itfs, routes) = rec.guest_config();
        assert_eq!(itfs.len(), 1);
        assert_eq!(itfs[0].addresses, ["fd00::5/64", "10.88.0.5/16"]);
        assert_eq!(itfs[0].name, "eth0");
        // Found by the MAC it booted with, given the pod's.
        assert_eq!(itfs[0].mac, "02:5e:1f:00:00:00");
        assert_eq!(itfs[0].new_mac, "0a:58:0a:58:00:05");
        assert!(routes.iter().all(|r| r.interface_mac == itfs[0].mac));
        let gws: Vec<_> = routes.iter().map(|r| r.gateway.as_str()).collect();
        assert_eq!(gws, ["10.88.0.1", "fd00::1", "10.88.0.9"]);
        assert_eq!(rec.dns().nameservers, ["10.96.0.10"]);
        let empty = PodNetRecord {
            result: None,
            ..rec
        };
        assert!(empty.ips().is_empty());
        assert!(empty.guest_config().0.is_empty());
    }

    #[test]
    fn boot_macs_are_local_unicast_and_per_pod() {
        let a = boot_mac(&"ab".repeat(32));
        assert_eq!(a, "02:ab:ab:ab:ab:ab");
        assert_ne!(a, boot_mac(&"cd".repeat(32)));
        assert_eq!(boot_mac("F"), "02:f0:00:00:00:00");
    }

    #[test]
    fn attachment_carries_ports_dns_and_bandwidth() {
        let mut config = PodConfig {
            metadata: PodMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            ..Default::default()
        };
        config.port_mappings.push(PortMapping {
            protocol: "tcp".into(),
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        });
        config.dns.servers.push("10.96.0.10".into());
        config
            .annotations
            .insert(INGRESS_ANNOTATION.into(), "10M".into());
        let att = attachment("abc", &record(json!({})), &config).unwrap();
        assert!(att
            .args
            .contains(&("K8S_POD_NAME".to_owned(), "web".to_owned())));
        assert_eq!(att.capabilities["portMappings"][0]["hostPort"], 8080);
        assert_eq!(att.capabilities["dns"]["servers"][0], "10.96.0.10");
        assert_eq!(att.capabilities["bandwidth"]["ingressRate"], 10_000_000);
        assert!(att.capabilities["bandwidth"].get("egressRate").is_none());
        config
            .annotations
            .insert(EGRESS_ANNOTATION.into(), "fast".into());
        assert!(matches!(
            attachment("abc", &record(json!({})), &config),
            Err(NetworkError::BadBandwidth { .. })
        ));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("512k"), Some(512_000));
        assert_eq!(parse_quantity("0"), None);
        assert_eq!(parse_quantity("1.5M"), None);
        assert_eq!(parse_quantity("M"), None);
    }

    #[test]
    fn not_ready_without_a_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let settings = NetworkSettings {
            cni_conf_dir: dir.path().join("net.d"),
            ..Default::default()
        };
        let nets = PodNetworks::new(settings.clone(), dir.path());
        let e = nets.current().unwrap_err();
        assert!(e.is_not_ready());
        assert!(e.to_string().contains("net.d"), "{e}");
        let off = PodNetworks::new(
            NetworkSettings {
                mode: NetworkMode::None,
                ..settings
            },
            dir.path(),
        );
        assert!(off.current().unwrap().is_none());
    }
}
