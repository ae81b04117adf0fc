//! `ContainerStatus` and `ListContainers`: the CRI shapes of containers, and filters.

use super::backend::{ContainerInfo, ContainerState};
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
        // Host mounts are refused at creation, so there are none to report.
        mounts: Vec::new(),
        log_path: c.log_path,
        resources: Some(resources),
        user: None,
        id: c.id,
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
        let s = status(c);
        assert_eq!((s.exit_code, s.image_ref.as_str()), (7, "sha256:x"));
        assert_eq!(s.image.unwrap().image, "busybox");
    }
}
