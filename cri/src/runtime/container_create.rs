//! `CreateContainer`: validates the container config and translates it. Merging with
//! the image's config happens in the backend, which knows the image.

use tonic::Status;

use super::backend::{ContainerConfig, ResourcesConfig, UserConfig};
use crate::proto;

/// The backend's container config from a `CreateContainerRequest`'s config.
pub fn container_config(config: Option<proto::ContainerConfig>) -> Result<ContainerConfig, Status> {
    let c = config.ok_or_else(|| Status::invalid_argument("config is required"))?;
    let metadata = c
        .metadata
        .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
    if metadata.name.is_empty() {
        return Err(Status::invalid_argument("config.metadata.name is required"));
    }
    let image = c.image.map(|i| i.image).unwrap_or_default();
    if image.is_empty() {
        return Err(Status::invalid_argument("config.image.image is required"));
    }
    if let Some(m) = c.mounts.first() {
        // Host directories reach a guest only through virtio-fs, which is not built yet.
        return Err(Status::invalid_argument(format!(
            "host mounts are not supported yet (mount of {:?} at {:?})",
            m.host_path, m.container_path
        )));
    }
    if let Some(d) = c.devices.first() {
        return Err(Status::invalid_argument(format!(
            "host devices cannot be passed into a pod VM ({:?})",
            d.host_path
        )));
    }
    if c.log_path.starts_with('/') || c.log_path.split('/').any(|p| p == "..") {
        return Err(Status::invalid_argument(format!(
            "config.log_path {:?} must be relative to the pod's log directory, without \"..\"",
            c.log_path
        )));
    }
    for kv in &c.envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(Status::invalid_argument(format!(
                "environment variable name {:?} is empty or contains '='",
                kv.key
            )));
        }
    }
    let linux = c.linux.unwrap_or_default();
    let resources = resources(
        &linux.resources.unwrap_or_default(),
        "config.linux.resources",
    )?;
    let sc = linux.security_context.unwrap_or_default();
    Ok(ContainerConfig {
        name: metadata.name,
        attempt: metadata.attempt,
        image,
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        labels: c.labels,
        annotations: c.annotations,
        log_path: c.log_path,
        tty: c.tty,
        stdin: c.stdin,
        user: UserConfig {
            uid: sc.run_as_user.map(|v| v.value),
            gid: sc.run_as_group.map(|v| v.value),
            username: sc.run_as_username,
            supplemental_groups: sc.supplemental_groups,
        },
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        resources,
    })
}

/// The backend's resources from the CRI ones (`field` names them in errors). The
/// limits must not be negative; 0 means unset.
pub fn resources(
    r: &proto::LinuxContainerResources,
    field: &str,
) -> Result<ResourcesConfig, Status> {
    for (what, v) in [
        ("cpu_period", r.cpu_period),
        ("cpu_quota", r.cpu_quota),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
    ] {
        if v < 0 {
            return Err(Status::invalid_argument(format!(
                "{field}.{what} must not be negative (got {v})"
            )));
        }
    }
    Ok(ResourcesConfig {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> proto::ContainerConfig {
        proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata {
                name: "c".into(),
                attempt: 1,
            }),
            image: Some(proto::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            envs: vec![proto::KeyValue {
                key: "A".into(),
                value: "b=c".into(),
            }],
            log_path: "c/0.log".into(),
            ..Default::default()
        }
    }

    #[test]
    fn translates() {
        let c = container_config(Some(config())).unwrap();
        assert_eq!((c.name.as_str(), c.attempt), ("c", 1));
        assert_eq!(c.envs, vec![("A".to_string(), "b=c".to_string())]);
    }

    #[test]
    fn rejects_bad_input() {
        let code = |c| container_config(Some(c)).unwrap_err().code();
        let mut c = config();
        c.metadata = None;
        assert_eq!(code(c), tonic::Code::InvalidArgument);
        let mut c = config();
        c.image = None;
        assert_eq!(code(c), tonic::Code::InvalidArgument);
        let mut c = config();
        c.log_path = "../escape".into();
        assert_eq!(code(c), tonic::Code::InvalidArgument);
        let mut c = config();
        c.mounts.push(proto::Mount::default());
        assert_eq!(code(c), tonic::Code::InvalidArgument);
    }
}
