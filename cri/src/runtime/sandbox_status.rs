//! `PodSandboxStatus` and `ListPodSandbox`: the CRI shapes of pods, and filters.

use std::collections::HashMap;

use super::backend::{PodInfo, PodState};
use crate::proto;

fn state(s: PodState) -> proto::PodSandboxState {
    match s {
        PodState::Ready => proto::PodSandboxState::SandboxReady,
        PodState::NotReady => proto::PodSandboxState::SandboxNotready,
    }
}

fn metadata(p: &PodInfo) -> proto::PodSandboxMetadata {
    let m = &p.config.metadata;
    proto::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

/// The CRI status of a pod, with the verbose info when asked.
pub fn status(p: PodInfo, verbose: bool) -> (proto::PodSandboxStatus, HashMap<String, String>) {
    let mut info = HashMap::new();
    if verbose {
        info.insert("info".to_string(), p.verbose_json.clone());
    }
    let status = proto::PodSandboxStatus {
        metadata: Some(metadata(&p)),
        state: state(p.state) as i32,
        created_at: p.created_at_ns,
        network: Some(proto::PodSandboxNetworkStatus {
            ip: p.ips.first().cloned().unwrap_or_default(),
            additional_ips: p
                .ips
                .iter()
                .skip(1)
                .map(|ip| proto::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(proto::LinuxPodSandboxStatus {
            namespaces: Some(proto::Namespace {
                options: Some(proto::NamespaceOption::default()),
            }),
        }),
        labels: p.config.labels,
        annotations: p.config.annotations,
        runtime_handler: p.config.runtime_handler,
        id: p.id,
    };
    (status, info)
}

/// The CRI list entry of a pod.
pub fn summary(p: PodInfo) -> proto::PodSandbox {
    proto::PodSandbox {
        metadata: Some(metadata(&p)),
        state: state(p.state) as i32,
        created_at: p.created_at_ns,
        labels: p.config.labels,
        annotations: p.config.annotations,
        runtime_handler: p.config.runtime_handler,
        id: p.id,
    }
}

/// Whether `labels` has every pair of `selector`.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a pod passes a `ListPodSandbox` filter (ID, state, labels). An ID filter
/// matches a unique ID prefix too, as crictl sends them.
pub fn matches(p: &PodInfo, f: &proto::PodSandboxFilter) -> bool {
    (f.id.is_empty() || p.id.starts_with(&f.id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == state(p.state) as i32)
        && labels_match(&p.config.labels, &f.label_selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::PodConfig;

    #[test]
    fn filters() {
        let mut p = PodInfo {
            id: "abcdef".into(),
            config: PodConfig::default(),
            state: PodState::Ready,
            created_at_ns: 1,
            verbose_json: "{}".into(),
            ips: vec!["10.88.0.5".into(), "fd00::5".into()],
        };
        p.config.labels.insert("app".into(), "web".into());
        let mut f = proto::PodSandboxFilter::default();
        assert!(matches(&p, &f));
        f.id = "abc".into();
        assert!(matches(&p, &f));
        f.label_selector.insert("app".into(), "db".into());
        assert!(!matches(&p, &f));
        f.label_selector.insert("app".into(), "web".into());
        f.state = Some(proto::PodSandboxStateValue {
            state: proto::PodSandboxState::SandboxNotready as i32,
        });
        assert!(!matches(&p, &f));
        let (s, info) = status(p, true);
        assert_eq!(s.state, proto::PodSandboxState::SandboxReady as i32);
        assert!(info.contains_key("info"));
        let net = s.network.unwrap();
        assert_eq!(net.ip, "10.88.0.5");
        assert_eq!(net.additional_ips[0].ip, "fd00::5");
    }
}
