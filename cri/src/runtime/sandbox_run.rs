//! `RunPodSandbox`: validates the pod config and sizes the VM from the pod's resources
//! plus overhead.

use tonic::Status;

use super::backend::{DnsConfig, PodConfig, PodMetadata, PortMapping};
use super::security;
use super::validate::non_negative;
use crate::proto;

/// Default CFS period when a quota comes without one (µs), as in the kernel.
const DEFAULT_CPU_PERIOD: u64 = 100_000;
/// Largest VM the VMM can make (its vCPU count is a u8).
const MAX_VCPUS: u64 = 254;
/// Longest hostname: an RFC 1123 label, what the kubelet sends at most (the kernel
/// takes 64 bytes).
const MAX_HOSTNAME: usize = 63;

/// The pod's hostname: the one asked for, checked, or, when the request has none (as
/// from crictl and other clients; the kubelet always sends one), one made from the pod
/// name as the kubelet makes it: cut to 63 characters, with no trailing `-` or `.`
/// (and here also lower-cased, anything else than letters, digits, `-` and `.` made
/// `-`, and no leading `-` or `.`, since any client can send any name).
fn hostname(requested: String, pod_name: &str) -> Result<String, Status> {
    if requested.is_empty() {
        let made: String = pod_name
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
                _ => '-',
            })
            .take(MAX_HOSTNAME)
            .collect();
        let made = made.trim_matches(['-', '.']);
        return Ok(if made.is_empty() { "pod" } else { made }.to_owned());
    }
    let valid = requested.len() <= MAX_HOSTNAME
        && requested
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !requested.starts_with(['-', '.']);
    if !valid {
        return Err(Status::invalid_argument(format!(
            "config.hostname {requested:?} is not a valid hostname: at most \
             {MAX_HOSTNAME} letters, digits, '-' and '.', not starting with '-' or '.'"
        )));
    }
    Ok(requested)
}

/// The backend's pod config from a `RunPodSandboxRequest`'s config.
pub fn pod_config(config: Option<proto::PodSandboxConfig>) -> Result<PodConfig, Status> {
    let config = config.ok_or_else(|| Status::invalid_argument("config is required"))?;
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
    for (field, value) in [
        ("name", &metadata.name),
        ("namespace", &metadata.namespace),
        ("uid", &metadata.uid),
    ] {
        if value.is_empty() {
            return Err(Status::invalid_argument(format!(
                "config.metadata.{field} is required"
            )));
        }
    }
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "config.log_directory {:?} must be an absolute path",
            config.log_directory
        )));
    }
    let linux = config.linux.unwrap_or_default();
    let security = security::pod_security(linux.security_context.as_ref())?;
    let network_mode = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.as_ref())
        .map_or(proto::NamespaceMode::Pod as i32, |n| n.network);
    if network_mode == proto::NamespaceMode::Node as i32 {
        // A VM has its own kernel and so its own network stack: it cannot join the
        // node's. Pods that need the node's network belong on a runc runtime class.
        return Err(Status::failed_precondition(
            "host network pods (namespace_options.network = NODE) cannot run in a VM: \
             vmlet gives every pod its own kernel and network stack; run such pods with \
             a container runtime class instead",
        ));
    }
    let port_mappings = config
        .port_mappings
        .iter()
        .map(port_mapping)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let PodSize {
        vcpus,
        memory_mib,
        cpu_millis,
    } = size(linux.resources.as_ref(), linux.overhead.as_ref())?;
    let dns = config.dns_config.unwrap_or_default();
    let hostname = hostname(config.hostname, &metadata.name)?;
    Ok(PodConfig {
        metadata: PodMetadata {
            name: metadata.name,
            uid: metadata.uid,
            namespace: metadata.namespace,
            attempt: metadata.attempt,
        },
        hostname,
        log_directory: config.log_directory,
        dns: DnsConfig {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        },
        labels: config.labels,
        annotations: config.annotations,
        vcpus,
        memory_mib,
        port_mappings,
        sysctls: linux.sysctls,
        security,
        cgroup_parent: linux.cgroup_parent,
        cpu_millis,
        runtime_handler: String::new(),
    })
}

/// A port mapping to publish; `None` for one without a host port (nothing to publish,
/// as kubelet sends for every declared container port).
fn port_mapping(m: &proto::PortMapping) -> Result<Option<PortMapping>, Status> {
    let port = |value: i32, what: &str| {
        u16::try_from(value).map_err(|_| {
            Status::invalid_argument(format!(
                "config.port_mappings: {what} {value} is not a port number"
            ))
        })
    };
    let host_port = port(m.host_port, "host_port")?;
    if host_port == 0 {
        return Ok(None);
    }
    let container_port = port(m.container_port, "container_port")?;
    if container_port == 0 {
        return Err(Status::invalid_argument(format!(
            "config.port_mappings: host port {host_port} maps to container port 0"
        )));
    }
    let protocol = match proto::Protocol::try_from(m.protocol) {
        Ok(proto::Protocol::Tcp) => "tcp",
        Ok(proto::Protocol::Udp) => "udp",
        Ok(proto::Protocol::Sctp) => "sctp",
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "config.port_mappings: unknown protocol {}",
                m.protocol
            )))
        }
    };
    if !m.host_ip.is_empty() && m.host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(Status::invalid_argument(format!(
            "config.port_mappings: host_ip {:?} is not an IP address",
            m.host_ip
        )));
    }
    Ok(Some(PortMapping {
        protocol: protocol.to_owned(),
        container_port,
        host_port,
        host_ip: m.host_ip.clone(),
    }))
}

/// What the pod's resources and overhead add up to (None where neither sets it).
struct PodSize {
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
    /// The CPU limit in thousandths of a CPU.
    cpu_millis: Option<u64>,
}

/// The pod's size from its resources and overhead.
fn size(
    resources: Option<&proto::LinuxContainerResources>,
    overhead: Option<&proto::LinuxContainerResources>,
) -> Result<PodSize, Status> {
    let mut cpu_millis: Option<u64> = None;
    let mut mem_bytes: Option<u64> = None;
    for (what, r) in [("resources", resources), ("overhead", overhead)] {
        let Some(r) = r else { continue };
        let quota = non_negative(r.cpu_quota, &format!("config.linux.{what}.cpu_quota"))?;
        let period = non_negative(r.cpu_period, &format!("config.linux.{what}.cpu_period"))?;
        non_negative(r.cpu_shares, &format!("config.linux.{what}.cpu_shares"))?;
        let mem = non_negative(
            r.memory_limit_in_bytes,
            &format!("config.linux.{what}.memory_limit_in_bytes"),
        )?;
        if quota > 0 {
            let period = if period == 0 {
                DEFAULT_CPU_PERIOD
            } else {
                period
            };
            let millis = quota.saturating_mul(1000).div_ceil(period);
            cpu_millis = Some(cpu_millis.unwrap_or(0).saturating_add(millis));
        }
        if mem > 0 {
            mem_bytes = Some(mem_bytes.unwrap_or(0).saturating_add(mem));
        }
    }
    let vcpus = match cpu_millis {
        Some(m) => {
            let v = m.div_ceil(1000).max(1);
            if v > MAX_VCPUS {
                return Err(Status::invalid_argument(format!(
                    "the pod's CPU limit asks for {v} vCPUs; a pod VM has at most {MAX_VCPUS}"
                )));
            }
            Some(v as u32)
        }
        None => None,
    };
    Ok(PodSize {
        vcpus,
        memory_mib: mem_bytes.map(|b| b.div_ceil(1 << 20)),
        cpu_millis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> proto::PodSandboxConfig {
        proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: "p".into(),
                uid: "u".into(),
                namespace: "n".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn hostnames_are_checked_or_made_from_the_pod_name() {
        let of = |hostname: &str, name: &str| {
            let mut c = config();
            c.hostname = hostname.into();
            c.metadata.as_mut().unwrap().name = name.into();
            pod_config(Some(c)).map(|p| p.hostname)
        };
        assert_eq!(of("web-0", "p").unwrap(), "web-0");
        // No hostname: the pod name, cut to 63 characters.
        let long = format!("merge-{}", "x".repeat(94));
        assert_eq!(of("", &long).unwrap(), long[..63]);
        assert_eq!(of("", "short.name").unwrap(), "short.name");
        // No trailing '-' or '.' after the cut; anything a hostname cannot hold made '-'.
        let cut_at_dash = format!("{}-tail", "a".repeat(62));
        assert_eq!(of("", &cut_at_dash).unwrap(), "a".repeat(62));
        assert_eq!(of("", "Web_Server 1").unwrap(), "web-server-1");
        assert_eq!(of("", "._-").unwrap(), "pod");
        for bad in ["has space", "-lead", &"h".repeat(64), "ünï"] {
            let e = of(bad, "p").unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains("config.hostname"), "{e}");
        }
    }

    #[test]
    fn metadata_is_required() {
        let e = pod_config(None).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "config is required")
        );
        let mut c = config();
        c.metadata.as_mut().unwrap().uid.clear();
        let e = pod_config(Some(c)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("uid"), "{e}");
        assert!(pod_config(Some(config())).is_ok());
    }

    #[test]
    fn host_network_is_refused_and_ports_are_checked() {
        let mut c = config();
        c.linux = Some(proto::LinuxPodSandboxConfig {
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(proto::NamespaceOption {
                    network: proto::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = pod_config(Some(c)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("host network"), "{e}");

        let mapping = |container_port, host_port, protocol| proto::PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip: String::new(),
        };
        let mut c = config();
        c.port_mappings = vec![
            mapping(80, 8080, 0),
            mapping(53, 0, 1),
            mapping(53, 5353, 1),
        ];
        let p = pod_config(Some(c)).unwrap();
        assert_eq!(p.port_mappings.len(), 2);
        assert_eq!(p.port_mappings[0].protocol, "tcp");
        assert_eq!(p.port_mappings[1].host_port, 5353);
        for bad in [
            mapping(70000, 80, 0),
            mapping(80, -1, 0),
            mapping(0, 80, 0),
            mapping(80, 81, 9),
        ] {
            let mut c = config();
            c.port_mappings = vec![bad];
            assert_eq!(
                pod_config(Some(c)).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }

    #[test]
    fn sizes_from_resources_and_overhead() {
        let mut c = config();
        c.linux = Some(proto::LinuxPodSandboxConfig {
            resources: Some(proto::LinuxContainerResources {
                cpu_quota: 150_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            overhead: Some(proto::LinuxContainerResources {
                memory_limit_in_bytes: (64 << 20) + 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let p = pod_config(Some(c)).unwrap();
        assert_eq!(p.vcpus, Some(2));
        assert_eq!(p.cpu_millis, Some(1500));
        assert_eq!(p.memory_mib, Some(321));
        let p = pod_config(Some(config())).unwrap();
        assert_eq!((p.vcpus, p.memory_mib), (None, None));
    }

    #[test]
    fn negative_or_huge_resources_are_invalid() {
        let mut c = config();
        c.linux = Some(proto::LinuxPodSandboxConfig {
            resources: Some(proto::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            pod_config(Some(c)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut c = config();
        c.linux = Some(proto::LinuxPodSandboxConfig {
            resources: Some(proto::LinuxContainerResources {
                cpu_quota: 1_000_000_000,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(pod_config(Some(c)).unwrap_err().message().contains("vCPUs"));
    }
}
