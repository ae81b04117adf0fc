//! `CreateContainer`: validates the container config and translates it. Merging with
//! the image's config happens in the backend, which knows the image.

use tonic::Status;

use super::backend::{ContainerConfig, MountConfig, Propagation, ResourcesConfig, UserConfig};
use super::security;
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
    let mounts = c
        .mounts
        .into_iter()
        .map(mount)
        .collect::<Result<Vec<_>, _>>()?;
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
    // As containerd: a group alone would leave the image's user with a group it did
    // not ask for.
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(Status::invalid_argument(format!(
            "config.linux.security_context.run_as_group ({}) is set without run_as_user or \
             run_as_username: set the user too",
            sc.run_as_group.as_ref().map_or(0, |g| g.value)
        )));
    }
    let security = security::container_security(&sc)?;
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
        stdin_once: c.stdin_once,
        user: UserConfig {
            uid: sc.run_as_user.map(|v| v.value),
            gid: sc.run_as_group.map(|v| v.value),
            username: sc.run_as_username,
            supplemental_groups: sc.supplemental_groups,
        },
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        resources,
        mounts,
        security,
    })
}

/// Checks one CRI mount's form; whether its host path can reach the pod is the
/// backend's to decide.
fn mount(m: proto::Mount) -> Result<MountConfig, Status> {
    let bad = |why: String| {
        Status::invalid_argument(format!(
            "mount of {:?} at {:?}: {why}",
            if m.host_path.is_empty() {
                m.image.as_ref().map_or("", |i| i.image.as_str())
            } else {
                m.host_path.as_str()
            },
            m.container_path
        ))
    };
    let path = &m.container_path;
    if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.contains('\0') {
        return Err(bad(
            "the container path must be absolute, without \"..\"".into()
        ));
    }
    let normal: String = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/");
    let top = normal.split('/').next().unwrap_or("");
    if normal.is_empty() || top == "proc" || top == "sys" {
        return Err(bad(
            "a volume cannot be mounted over \"/\", /proc or /sys".into()
        ));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(bad(
            "ID-mapped mounts (uid_mappings, gid_mappings) are not supported".into(),
        ));
    }
    let image = m
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    match (m.host_path.is_empty(), image.is_empty()) {
        (true, true) => return Err(bad("host_path (or image) is required".into())),
        (false, false) => return Err(bad("host_path and image are exclusive".into())),
        _ => {}
    }
    if !m.host_path.is_empty() && !m.host_path.starts_with('/') {
        return Err(bad("the host path must be absolute".into()));
    }
    if m.recursive_read_only && !m.readonly {
        return Err(bad("recursive_read_only needs readonly".into()));
    }
    let propagation = match proto::MountPropagation::try_from(m.propagation) {
        Ok(proto::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(proto::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(proto::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => return Err(bad(format!("unknown propagation {}", m.propagation))),
    };
    Ok(MountConfig {
        container_path: format!("/{normal}"),
        host_path: m.host_path,
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        selinux_relabel: m.selinux_relabel,
        propagation,
        image,
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
        for (host, ctr) in [
            ("", "/data"),
            ("/h", "data"),
            ("/h", "/a/../etc"),
            ("/h", "/"),
            ("/h", "/proc"),
            ("/h", "//sys/kernel"),
            ("relative", "/data"),
        ] {
            let mut c = config();
            c.mounts.push(proto::Mount {
                host_path: host.into(),
                container_path: ctr.into(),
                ..Default::default()
            });
            let e = container_config(Some(c)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{host} {ctr}");
            assert!(e.message().contains(ctr), "{}", e.message());
        }
    }

    #[test]
    fn a_group_needs_a_user() {
        let with = |user: Option<i64>, name: &str| {
            let mut c = config();
            c.linux = Some(proto::LinuxContainerConfig {
                security_context: Some(proto::LinuxContainerSecurityContext {
                    run_as_group: Some(proto::Int64Value { value: 3000 }),
                    run_as_user: user.map(|value| proto::Int64Value { value }),
                    run_as_username: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            container_config(Some(c))
        };
        let e = with(None, "").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("run_as_group") && e.message().contains("run_as_user"),
            "{}",
            e.message()
        );
        assert_eq!(with(Some(1000), "").unwrap().user.gid, Some(3000));
        assert_eq!(with(None, "nobody").unwrap().user.gid, Some(3000));
    }

    #[test]
    fn mounts_translate() {
        let mut c = config();
        c.mounts.push(proto::Mount {
            host_path: "/var/lib/kubelet/pods/u/etc-hosts".into(),
            container_path: "/etc//hosts".into(),
            readonly: true,
            propagation: proto::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        });
        let m = &container_config(Some(c)).unwrap().mounts[0];
        assert_eq!(m.container_path, "/etc/hosts");
        assert_eq!(m.propagation, Propagation::HostToContainer);
        assert!(m.readonly);
    }
}
