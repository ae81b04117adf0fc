//! `ContainerStatus` and `ListContainers`: the CRI shapes of containers, and filters.

use super::backend::{ContainerInfo, ContainerState, MountConfig, Propagation};
use super::sandbox_status::labels_match;
use crate::proto;

fn state(s: ContainerState) -> proto::ContainerState {
    match s {
        ContainerState::Created => proto::ContainerState::ContainerCreated,
        ContainerState::Running => proto::ContainerState::ContainerRunning,
        ContainerState::Exited => proto::ContainerState::ContainerExited,
        ContainerState::Unknown => proto::ContainerState::ContainerUnknown,
    }
}

fn image_spec(c: &ContainerInfo) -> proto::ImageSpec {
    proto::ImageSpec {
        image: c.config.image.clone(),
        ..Default::default()
    }
}

/// The CRI status of a container.
pub fn status(c: ContainerInfo) -> proto::ContainerStatus {
    let r = &c.config.resources;
    let resources = proto::ContainerResources {
        linux: Some(proto::LinuxContainerResources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_bytes,
            oom_score_adj: r.oom_score_adj,
            ..Default::default()
        }),
        windows: None,
    };
    proto::ContainerStatus {
        metadata: Some(proto::ContainerMetadata {
            name: c.config.name.clone(),
            attempt: c.config.attempt,
        }),
        state: state(c.state) as i32,
        created_at: c.created_at_ns,
        started_at: c.started_at_ns,
        finished_at: c.finished_at_ns,
        exit_code: c.exit_code,
        image: Some(image_spec(&c)),
        image_ref: c.image_id.clone(),
        image_id: c.image_id.clone(),
        reason: c.reason,
        message: c.message,
        labels: c.config.labels,
        annotations: c.config.annotations,
        // As containerd: the mounts as requested.
        mounts: c.config.mounts.iter().map(mount).collect(),
        log_path: c.log_path,
        resources: Some(resources),
        user: c.user.map(|u| proto::ContainerUser {
            linux: Some(proto::LinuxContainerUser {
                uid: i64::from(u.uid),
                gid: i64::from(u.gid),
                supplemental_groups: u
                    .supplemental_groups
                    .iter()
                    .map(|&g| i64::from(g))
                    .collect(),
            }),
        }),
        id: c.id,
    }
}

fn mount(m: &MountConfig) -> proto::Mount {
    let propagation = match m.propagation {
        Propagation::Private => proto::MountPropagation::PropagationPrivate,
        Propagation::HostToContainer => proto::MountPropagation::PropagationHostToContainer,
        Propagation::Bidirectional => proto::MountPropagation::PropagationBidirectional,
    };
    proto::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: propagation as i32,
        recursive_read_only: m.recursive_read_only,
        image: (!m.image.is_empty()).then(|| proto::ImageSpec {
            image: m.image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The CRI list entry of a container.
pub fn summary(c: ContainerInfo) -> proto::Container {
    proto::Container {
        metadata: Some(proto::ContainerMetadata {
            name: c.config.name.clone(),
            attempt: c.config.attempt,
        }),
        image: Some(image_spec(&c)),
        image_ref: c.image_id.clone(),
        image_id: c.image_id,
        state: state(c.state) as i32,
        created_at: c.created_at_ns,
        labels: c.config.labels,
        annotations: c.config.annotations,
        pod_sandbox_id: c.pod_id,
        id: c.id,
    }
}

/// Whether a container passes a `ListContainers` filter (ID or ID prefix, state, pod
/// or pod prefix, labels).
pub fn matches(c: &ContainerInfo, f: &proto::ContainerFilter) -> bool {
    (f.id.is_empty() || c.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == state(c.state) as i32)
        && labels_match(&c.config.labels, &f.label_selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::ContainerConfig;

    use crate::runtime::ProcessUser;

    #[test]
    fn filters_and_shapes() {
        let c = ContainerInfo {
            id: "c1".into(),
            pod_id: "p1".into(),
            config: ContainerConfig {
                name: "n".into(),
                image: "busybox".into(),
                ..Default::default()
            },
            image_id: "sha256:x".into(),
            state: ContainerState::Exited,
            created_at_ns: 1,
            started_at_ns: 2,
            finished_at_ns: 3,
            exit_code: 7,
            reason: "Error".into(),
            message: String::new(),
            log_path: "/l".into(),
            verbose_json: String::new(),
            user: Some(ProcessUser {
                uid: 1000,
                gid: 3000,
                supplemental_groups: vec![2000],
            }),
        };
        let mut f = proto::ContainerFilter {
            pod_sandbox_id: "p".into(),
            ..Default::default()
        };
        assert!(matches(&c, &f));
        f.state = Some(proto::ContainerStateValue {
            state: proto::ContainerState::ContainerRunning as i32,
        });
        assert!(!matches(&c, &f));
        let mut c = c;
        c.config.mounts.push(MountConfig {
            container_path: "/etc/hosts".into(),
            host_path: "/var/lib/kubelet/pods/u/etc-hosts".into(),
            propagation: Propagation::HostToContainer,
            ..Default::default()
        });
        let s = status(c);
        assert_eq!((s.exit_code, s.image_ref.as_str()), (7, "sha256:x"));
        assert_eq!(s.image.unwrap().image, "busybox");
        let user = s.user.unwrap().linux.unwrap();
        assert_eq!(
            (user.uid, user.gid, user.supplemental_groups),
            (1000, 3000, vec![2000])
        );
        assert_eq!(s.mounts.len(), 1);
        assert_eq!(s.mounts[0].host_path, "/var/lib/kubelet/pods/u/etc-hosts");
        assert_eq!(
            s.mounts[0].propagation,
            proto::MountPropagation::PropagationHostToContainer as i32
        );
    }
}
