//! The security context of pods and containers: checked and normalized here, so the
//! backend gets names it can trust (capability names known, paths absolute, profiles
//! resolved from the deprecated string fields) and bad input is an InvalidArgument
//! naming the field.
//!
//! Host namespaces other than the network's (refused in `sandbox_run`) are refused
//! with FailedPrecondition: a VM has its own kernel, so it cannot share the node's
//! PID or IPC namespace.

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::proto;

/// Every capability Linux knows (up to CAP_CHECKPOINT_RESTORE, 5.9), in bit order.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Most names in one capability list (there are 41 capabilities; a few repeats and
/// "ALL" are tolerated).
const MAX_CAPABILITY_NAMES: usize = 128;

/// Most masked or read-only paths in one list.
const MAX_PATHS: usize = 256;

/// Longest path accepted in those lists and in a profile reference.
const MAX_PATH_LEN: usize = 4096;

/// The seccomp profile a container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// No filter (what containerd applies when nothing is asked for).
    #[default]
    Unconfined,
    /// The runtime's default profile.
    RuntimeDefault,
    /// A profile file on the node (absolute path, checked by the backend against its
    /// profile root).
    Localhost(String),
}

/// Capability changes as the CRI sends them, each name "CAP_X" (upper case) or "ALL".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesConfig {
    /// Added to the default set.
    pub add: Vec<String>,
    /// Dropped from it (after the additions, as containerd applies them).
    pub drop: Vec<String>,
    /// Also made ambient (and inheritable).
    pub add_ambient: Vec<String>,
}

/// Which PID namespace a container's processes live in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNamespace {
    /// Its own (the container's process is PID 1).
    #[default]
    Container,
    /// The pod's, whose PID 1 is the pod's holder process.
    Pod,
    /// That of another container of the pod (ephemeral debug containers).
    Target(String),
}

/// A container's security context, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityConfig {
    /// `privileged`: inside the pod's VM only.
    pub privileged: bool,
    /// `capabilities`; None: the default set.
    pub capabilities: Option<CapabilitiesConfig>,
    /// The resolved seccomp profile.
    pub seccomp: SeccompProfile,
    /// `masked_paths`; empty: the runtime's defaults (none when privileged).
    pub masked_paths: Vec<String>,
    /// `readonly_paths`; empty: the runtime's defaults (none when privileged).
    pub readonly_paths: Vec<String>,
    /// `supplemental_groups_policy` Strict: no groups from the image's /etc/group.
    pub strict_supplemental_groups: bool,
    /// `namespace_options.pid`.
    pub pid_namespace: PidNamespace,
    /// `namespace_options.userns_options` mode POD: the kubelet repeats the pod's.
    #[serde(default)]
    pub userns: Option<UserNamespaceConfig>,
}

/// A pod's security context, checked: what its containers are held against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSecurity {
    /// `privileged`: containers of the pod may be privileged.
    pub privileged: bool,
    /// `namespace_options.userns_options` mode POD (`hostUsers: false`): the user
    /// namespace the pod's containers run in.
    #[serde(default)]
    pub userns: Option<UserNamespaceConfig>,
}

/// Most ranges in one id mapping list (the kernel takes up to 340 lines).
const MAX_ID_MAPPINGS: usize = 64;

/// `length` ids from `container_id` in a user namespace are `host_id`.. outside it
/// (in the guest's initial namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside.
    pub container_id: u32,
    /// First id outside.
    pub host_id: u32,
    /// How many.
    pub length: u32,
}

/// A user namespace's mappings, checked: each list non-empty, no range empty,
/// past the id space or overlapping another of its list on either side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespaceConfig {
    /// uid ranges.
    pub uids: Vec<IdMap>,
    /// gid ranges.
    pub gids: Vec<IdMap>,
}

impl UserNamespaceConfig {
    /// uid `id` inside, seen outside (`None`: unmapped).
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        outside(&self.uids, id)
    }

    /// gid `id` inside, seen outside (`None`: unmapped).
    pub fn host_gid(&self, id: u32) -> Option<u32> {
        outside(&self.gids, id)
    }
}

fn outside(maps: &[IdMap], id: u32) -> Option<u32> {
    maps.iter()
        .find(|m| id >= m.container_id && id - m.container_id < m.length)
        .map(|m| m.host_id + (id - m.container_id))
}

/// Checks `userns_options`; `None` for the node's user namespace (mode NODE, or no
/// options).
fn user_namespace(
    u: Option<&proto::UserNamespace>,
    field: &str,
) -> Result<Option<UserNamespaceConfig>, Status> {
    let Some(u) = u else {
        return Ok(None);
    };
    let field = format!("{field}.namespace_options.userns_options");
    match proto::NamespaceMode::try_from(u.mode) {
        Ok(proto::NamespaceMode::Node) => Ok(None),
        Ok(proto::NamespaceMode::Pod) => Ok(Some(UserNamespaceConfig {
            uids: id_maps(&u.uids, &format!("{field}.uids"))?,
            gids: id_maps(&u.gids, &format!("{field}.gids"))?,
        })),
        _ => Err(Status::invalid_argument(format!(
            "{field}.mode {}: only POD (hostUsers: false) and NODE are supported",
            u.mode
        ))),
    }
}

fn id_maps(list: &[proto::IdMapping], field: &str) -> Result<Vec<IdMap>, Status> {
    let bad = |why: String| Err(Status::invalid_argument(format!("{field}: {why}")));
    if list.is_empty() || list.len() > MAX_ID_MAPPINGS {
        return bad(format!(
            "{} mappings; a user namespace takes 1 to {MAX_ID_MAPPINGS}",
            list.len()
        ));
    }
    let mut maps: Vec<IdMap> = Vec::with_capacity(list.len());
    for m in list {
        let map = IdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        };
        let text = format!(
            "container {} host {} length {}",
            m.container_id, m.host_id, m.length
        );
        if m.length == 0 {
            return bad(format!("{text}: an empty range"));
        }
        // The last id, u32::MAX, is the kernel's "no id" and cannot be mapped.
        let end = |start: u32| u64::from(start) + u64::from(m.length);
        if end(m.container_id) > u64::from(u32::MAX) || end(m.host_id) > u64::from(u32::MAX) {
            return bad(format!("{text}: ends past the last id {}", u32::MAX - 1));
        }
        let overlaps = |a: u32, b: u32, len_b: u32| {
            let (a, b) = (u64::from(a), u64::from(b));
            a < b + u64::from(len_b) && b < a + u64::from(m.length)
        };
        if let Some(o) = maps.iter().find(|o| {
            overlaps(m.container_id, o.container_id, o.length)
                || overlaps(m.host_id, o.host_id, o.length)
        }) {
            return bad(format!(
                "{text} overlaps container {} host {} length {}",
                o.container_id, o.host_id, o.length
            ));
        }
        maps.push(map);
    }
    Ok(maps)
}

fn refuse_node_namespaces(ns: &proto::NamespaceOption, field: &str) -> Result<(), Status> {
    for (what, mode) in [("pid", ns.pid), ("ipc", ns.ipc)] {
        if mode == proto::NamespaceMode::Node as i32 {
            return Err(Status::failed_precondition(format!(
                "{field}.namespace_options.{what} = NODE (host {what} namespace) cannot be \
                 given to a VM: vmlet runs every pod on its own kernel; run such pods with \
                 a container runtime class instead"
            )));
        }
    }
    Ok(())
}

/// Checks a pod's security context.
// The deprecated string fields are still sent by older kubelets and by crictl.
#[allow(deprecated)]
pub fn pod_security(
    sc: Option<&proto::LinuxSandboxSecurityContext>,
) -> Result<PodSecurity, Status> {
    let Some(sc) = sc else {
        return Ok(PodSecurity::default());
    };
    let field = "config.linux.security_context";
    let mut userns = None;
    if let Some(ns) = &sc.namespace_options {
        refuse_node_namespaces(ns, field)?;
        userns = user_namespace(ns.userns_options.as_ref(), field)?;
    }
    // The pod has no container of its own to confine, but a bad profile is still
    // the caller's mistake to hear about.
    seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path, field)?;
    apparmor(sc.apparmor.as_ref(), "", field)?;
    supplemental_groups_policy(sc.supplemental_groups_policy, field)?;
    if userns.is_some() && sc.privileged {
        return Err(Status::invalid_argument(format!(
            "{field}: a privileged pod cannot have its own user namespace \
             (namespace_options.userns_options mode POD, hostUsers: false)"
        )));
    }
    Ok(PodSecurity {
        privileged: sc.privileged,
        userns,
    })
}

/// Checks a container's security context.
#[allow(deprecated)] // as for pod_security
pub fn container_security(
    sc: &proto::LinuxContainerSecurityContext,
) -> Result<SecurityConfig, Status> {
    let field = "config.linux.security_context";
    let pid_namespace = match &sc.namespace_options {
        None => PidNamespace::Container,
        Some(ns) => {
            refuse_node_namespaces(ns, field)?;
            if ns.network == proto::NamespaceMode::Node as i32 {
                return Err(Status::failed_precondition(format!(
                    "{field}.namespace_options.network = NODE cannot be given to a VM: \
                     run such pods with a container runtime class instead"
                )));
            }
            match proto::NamespaceMode::try_from(ns.pid) {
                Ok(proto::NamespaceMode::Pod) => PidNamespace::Pod,
                Ok(proto::NamespaceMode::Container) => PidNamespace::Container,
                Ok(proto::NamespaceMode::Target) => {
                    if ns.target_id.is_empty() {
                        return Err(Status::invalid_argument(format!(
                            "{field}.namespace_options: pid = TARGET needs target_id"
                        )));
                    }
                    PidNamespace::Target(ns.target_id.clone())
                }
                // NODE was refused above.
                Ok(proto::NamespaceMode::Node) | Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "{field}.namespace_options.pid: unknown mode {}",
                        ns.pid
                    )))
                }
            }
        }
    };
    let capabilities = sc
        .capabilities
        .as_ref()
        .map(|c| {
            Ok::<_, Status>(CapabilitiesConfig {
                add: capability_names(
                    &c.add_capabilities,
                    &format!("{field}.capabilities.add_capabilities"),
                    true,
                )?,
                drop: capability_names(
                    &c.drop_capabilities,
                    &format!("{field}.capabilities.drop_capabilities"),
                    true,
                )?,
                add_ambient: capability_names(
                    &c.add_ambient_capabilities,
                    &format!("{field}.capabilities.add_ambient_capabilities"),
                    false,
                )?,
            })
        })
        .transpose()?;
    apparmor(sc.apparmor.as_ref(), &sc.apparmor_profile, field)?;
    Ok(SecurityConfig {
        privileged: sc.privileged,
        capabilities,
        seccomp: seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path, field)?,
        masked_paths: paths(&sc.masked_paths, &format!("{field}.masked_paths"))?,
        readonly_paths: paths(&sc.readonly_paths, &format!("{field}.readonly_paths"))?,
        strict_supplemental_groups: supplemental_groups_policy(
            sc.supplemental_groups_policy,
            field,
        )?,
        pid_namespace,
        userns: match &sc.namespace_options {
            Some(ns) => user_namespace(ns.userns_options.as_ref(), field)?,
            None => None,
        },
    })
}

fn supplemental_groups_policy(policy: i32, field: &str) -> Result<bool, Status> {
    match proto::SupplementalGroupsPolicy::try_from(policy) {
        Ok(proto::SupplementalGroupsPolicy::Merge) => Ok(false),
        Ok(proto::SupplementalGroupsPolicy::Strict) => Ok(true),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field}.supplemental_groups_policy: unknown policy {policy}"
        ))),
    }
}

/// Capability names as the CRI sends them ("NET_ADMIN"; "CAP_NET_ADMIN" and any case
/// are accepted too) made "CAP_NET_ADMIN"; "ALL" kept where `all` allows it.
fn capability_names(names: &[String], field: &str, all: bool) -> Result<Vec<String>, Status> {
    if names.len() > MAX_CAPABILITY_NAMES {
        return Err(Status::invalid_argument(format!(
            "{field}: {} names, at most {MAX_CAPABILITY_NAMES}",
            names.len()
        )));
    }
    names
        .iter()
        .map(|n| {
            let upper = n.to_ascii_uppercase();
            if all && upper == "ALL" {
                return Ok(upper);
            }
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            if ALL_CAPABILITIES.contains(&full.as_str()) {
                Ok(full)
            } else {
                Err(Status::invalid_argument(format!(
                    "{field}: unknown capability {n:?}"
                )))
            }
        })
        .collect()
}

fn paths(list: &[String], field: &str) -> Result<Vec<String>, Status> {
    if list.len() > MAX_PATHS {
        return Err(Status::invalid_argument(format!(
            "{field}: {} paths, at most {MAX_PATHS}",
            list.len()
        )));
    }
    for p in list {
        if !p.starts_with('/')
            || p.len() > MAX_PATH_LEN
            || p.contains('\0')
            || p.split('/').any(|c| c == "..")
        {
            return Err(Status::invalid_argument(format!(
                "{field}: {p:?} is not an absolute path without \"..\""
            )));
        }
    }
    Ok(list.to_vec())
}

/// The seccomp profile from the structured field, or else the deprecated path string
/// ("" and "unconfined": none; "runtime/default", "docker/default"; "localhost/PATH").
fn seccomp(
    profile: Option<&proto::SecurityProfile>,
    path: &str,
    field: &str,
) -> Result<SeccompProfile, Status> {
    if let Some(p) = profile {
        return match proto::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(proto::security_profile::ProfileType::RuntimeDefault) => {
                Ok(SeccompProfile::RuntimeDefault)
            }
            Ok(proto::security_profile::ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
            Ok(proto::security_profile::ProfileType::Localhost) => {
                localhost(&p.localhost_ref, &format!("{field}.seccomp.localhost_ref"))
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "{field}.seccomp: unknown profile type {}",
                p.profile_type
            ))),
        };
    }
    match path {
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        _ => match path.strip_prefix("localhost/") {
            Some(p) => localhost(p, &format!("{field}.seccomp_profile_path")),
            None => Err(Status::invalid_argument(format!(
                "{field}.seccomp_profile_path {path:?}: expected \"\", \"unconfined\", \
                 \"runtime/default\" or \"localhost/<absolute path>\""
            ))),
        },
    }
}

fn localhost(path: &str, field: &str) -> Result<SeccompProfile, Status> {
    if !path.starts_with('/') || path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{field} {path:?} must be an absolute path to a profile file on the node"
        )));
    }
    Ok(SeccompProfile::Localhost(path.to_owned()))
}

/// There is no AppArmor in a pod's VM. As containerd does on a node without
/// AppArmor, the runtime default and unconfined are accepted (nothing to apply) and a
/// named (localhost) profile is refused: it could not be enforced.
fn apparmor(
    profile: Option<&proto::SecurityProfile>,
    name: &str,
    field: &str,
) -> Result<(), Status> {
    let named = match profile {
        Some(p) => match proto::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(proto::security_profile::ProfileType::Localhost) => Some(p.localhost_ref.as_str()),
            Ok(_) => None,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "{field}.apparmor: unknown profile type {}",
                    p.profile_type
                )))
            }
        },
        None => name.strip_prefix("localhost/"),
    };
    match named {
        Some(n) => Err(Status::invalid_argument(format!(
            "{field}.apparmor: AppArmor profile {n:?} cannot be enforced: there is no \
             AppArmor in vmlet's pod VMs (runtime/default and unconfined are accepted)"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(t: proto::security_profile::ProfileType, r: &str) -> proto::SecurityProfile {
        proto::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        }
    }

    #[test]
    fn capability_names_normalize_and_reject_unknown() {
        let sc = proto::LinuxContainerSecurityContext {
            capabilities: Some(proto::Capability {
                add_capabilities: vec!["net_admin".into(), "CAP_SYS_TIME".into()],
                drop_capabilities: vec!["ALL".into()],
                add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
            }),
            ..Default::default()
        };
        let c = container_security(&sc).unwrap().capabilities.unwrap();
        assert_eq!(c.add, ["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
        assert_eq!(c.drop, ["ALL"]);
        assert_eq!(c.add_ambient, ["CAP_NET_BIND_SERVICE"]);
        for bad in ["NET_ADMINS", "", "CAP_"] {
            let sc = proto::LinuxContainerSecurityContext {
                capabilities: Some(proto::Capability {
                    add_capabilities: vec![bad.into()],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let e = container_security(&sc).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("add_capabilities"), "{}", e.message());
        }
        let sc = proto::LinuxContainerSecurityContext {
            capabilities: Some(proto::Capability {
                add_ambient_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(container_security(&sc).is_err());
    }

    #[test]
    fn seccomp_profiles_resolve() {
        use proto::security_profile::ProfileType as T;
        let f = "f";
        assert_eq!(seccomp(None, "", f).unwrap(), SeccompProfile::Unconfined);
        assert_eq!(
            seccomp(None, "runtime/default", f).unwrap(),
            SeccompProfile::RuntimeDefault
        );
        assert_eq!(
            seccomp(None, "localhost//p/x.json", f).unwrap(),
            SeccompProfile::Localhost("/p/x.json".into())
        );
        assert!(seccomp(None, "localhost/rel.json", f).is_err());
        assert!(seccomp(None, "bogus", f).is_err());
        let p = profile(T::RuntimeDefault, "");
        assert_eq!(
            seccomp(Some(&p), "unconfined", f).unwrap(),
            SeccompProfile::RuntimeDefault
        );
        let p = profile(T::Localhost, "/var/lib/kubelet/seccomp/a.json");
        assert_eq!(
            seccomp(Some(&p), "", f).unwrap(),
            SeccompProfile::Localhost("/var/lib/kubelet/seccomp/a.json".into())
        );
        let p = proto::SecurityProfile {
            profile_type: 9,
            localhost_ref: String::new(),
        };
        assert!(seccomp(Some(&p), "", f).is_err());
    }

    #[test]
    fn apparmor_named_profiles_are_refused() {
        use proto::security_profile::ProfileType as T;
        assert!(apparmor(Some(&profile(T::RuntimeDefault, "")), "", "f").is_ok());
        assert!(apparmor(Some(&profile(T::Unconfined, "")), "", "f").is_ok());
        assert!(apparmor(None, "runtime/default", "f").is_ok());
        let e = apparmor(Some(&profile(T::Localhost, "k8s-nginx")), "", "f").unwrap_err();
        assert!(e.message().contains("k8s-nginx"), "{}", e.message());
        assert!(apparmor(None, "localhost/k8s-nginx", "f").is_err());
    }

    #[test]
    fn host_namespaces_are_refused() {
        for ns in [
            proto::NamespaceOption {
                pid: proto::NamespaceMode::Node as i32,
                ..Default::default()
            },
            proto::NamespaceOption {
                ipc: proto::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ] {
            let sc = proto::LinuxSandboxSecurityContext {
                namespace_options: Some(ns.clone()),
                ..Default::default()
            };
            let e = pod_security(Some(&sc)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            assert!(e.message().contains("namespace_options"), "{}", e.message());
            let sc = proto::LinuxContainerSecurityContext {
                namespace_options: Some(ns),
                ..Default::default()
            };
            let e = container_security(&sc).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        }
    }

    #[test]
    fn user_namespace_mappings_are_checked() {
        let map = |container_id, host_id, length| proto::IdMapping {
            host_id,
            container_id,
            length,
        };
        let pod = |mode: proto::NamespaceMode, uids: Vec<proto::IdMapping>, privileged| {
            let sc = proto::LinuxSandboxSecurityContext {
                privileged,
                namespace_options: Some(proto::NamespaceOption {
                    userns_options: Some(proto::UserNamespace {
                        mode: mode as i32,
                        gids: vec![map(0, 65536, 65536)],
                        uids,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            pod_security(Some(&sc))
        };
        use proto::NamespaceMode::{Container, Node, Pod};
        // The kubelet's: one range of 65536 at a multiple of 65536.
        let u = pod(Pod, vec![map(0, 65536, 65536)], false)
            .unwrap()
            .userns
            .unwrap();
        assert_eq!(
            u.uids,
            [IdMap {
                container_id: 0,
                host_id: 65536,
                length: 65536
            }]
        );
        assert_eq!(pod(Node, vec![], false).unwrap().userns, None);
        for (mode, uids, privileged, why) in [
            (Pod, vec![], false, "0 mappings"),
            (Pod, vec![map(0, 65536, 0)], false, "empty range"),
            (
                Pod,
                vec![map(0, u32::MAX - 10, 11)],
                false,
                "past the last id",
            ),
            (Pod, vec![map(u32::MAX, 0, 1)], false, "past the last id"),
            (
                Pod,
                vec![map(0, 65536, 1000), map(999, 200_000, 10)],
                false,
                "overlaps",
            ),
            (
                Pod,
                vec![map(0, 65536, 1000), map(2000, 66000, 10)],
                false,
                "overlaps",
            ),
            (Pod, vec![map(0, 65536, 1); 65], false, "65 mappings"),
            (Container, vec![map(0, 65536, 65536)], false, "only POD"),
            (Pod, vec![map(0, 65536, 65536)], true, "privileged"),
        ] {
            let e = pod(mode, uids, privileged).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{why}");
            assert!(e.message().contains(why), "{why}: {}", e.message());
            assert!(e.message().contains("userns_options"), "{}", e.message());
        }
    }

    #[test]
    fn pid_namespace_modes() {
        let sc = |pid: proto::NamespaceMode, target: &str| proto::LinuxContainerSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                pid: pid as i32,
                target_id: target.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ns = |s| container_security(&s).map(|c| c.pid_namespace);
        assert_eq!(
            ns(sc(proto::NamespaceMode::Pod, "")).unwrap(),
            PidNamespace::Pod
        );
        assert_eq!(
            ns(sc(proto::NamespaceMode::Container, "")).unwrap(),
            PidNamespace::Container
        );
        assert_eq!(
            ns(sc(proto::NamespaceMode::Target, "abc")).unwrap(),
            PidNamespace::Target("abc".into())
        );
        assert!(ns(sc(proto::NamespaceMode::Target, "")).is_err());
        assert_eq!(
            ns(proto::LinuxContainerSecurityContext::default()).unwrap(),
            PidNamespace::Container
        );
    }

    #[test]
    fn paths_must_be_absolute() {
        let sc = proto::LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/kcore".into(), "proc/keys".into()],
            ..Default::default()
        };
        let e = container_security(&sc).unwrap_err();
        assert!(e.message().contains("masked_paths"), "{}", e.message());
        assert!(e.message().contains("proc/keys"), "{}", e.message());
        let sc = proto::LinuxContainerSecurityContext {
            readonly_paths: vec!["/proc/../etc".into()],
            ..Default::default()
        };
        assert!(container_security(&sc).is_err());
        let sc = proto::LinuxContainerSecurityContext {
            supplemental_groups_policy: 1,
            ..Default::default()
        };
        assert!(container_security(&sc).unwrap().strict_supplemental_groups);
    }
}
