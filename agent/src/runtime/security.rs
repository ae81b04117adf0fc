//! What a container's security context becomes in the guest's spec, as containerd
//! turns it into an OCI spec for runc: the five capability sets, the seccomp filter
//! (compiled here, so a bad profile fails CreateContainer before the guest is
//! asked), the masked and read-only paths.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmlet_cri::runtime::{
    CapabilitiesConfig, ContainerConfig, PodConfig, SeccompProfile, UserNamespaceConfig,
    ALL_CAPABILITIES,
};
use vmlet_proto::agent as pb;

/// containerd's default capability set (the one in its default OCI spec).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// containerd's default masked paths (its default OCI spec; the kubelet sends the
/// same list).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Largest seccomp profile file read.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// A security context that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A privileged container in a pod that is not.
    #[error(
        "a privileged container needs a privileged pod (config.linux.security_context.privileged \
         of the pod sandbox)"
    )]
    PrivilegedInUnprivilegedPod,
    /// The container's user namespace is not its pod's.
    #[error(
        "config.linux.security_context.namespace_options.userns_options differs from the pod \
         sandbox's: a container runs in its pod's user namespace"
    )]
    UserNamespaceMismatch,
    /// A Localhost profile outside the profile root.
    #[error(
        "seccomp profile {path:?} is outside the seccomp profile root {root:?} \
         ([security] seccomp_profile_root)"
    )]
    ProfileOutsideRoot {
        /// The profile asked for.
        path: PathBuf,
        /// The configured root.
        root: PathBuf,
    },
    /// The profile file cannot be read.
    #[error("seccomp profile {path:?}: {source}")]
    ProfileRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The profile file is too large.
    #[error("seccomp profile {0:?} is larger than {MAX_PROFILE_BYTES} bytes")]
    ProfileTooLarge(PathBuf),
    /// The profile does not parse.
    #[error("seccomp profile {what}: {source}")]
    ProfileParse {
        /// Which profile.
        what: String,
        /// Why.
        source: vmlet_seccomp::ProfileError,
    },
    /// The profile does not compile.
    #[error("seccomp profile {what}: {source}")]
    ProfileCompile {
        /// Which profile.
        what: String,
        /// Why.
        source: vmlet_seccomp::CompileError,
    },
}

/// The kubelet's own seccomp profile directory (its `<root-dir>/seccomp`).
pub const DEFAULT_SECCOMP_PROFILE_ROOT: &str = "/var/lib/kubelet/seccomp";

/// Where the runtime finds what a security context names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecuritySettings {
    /// Localhost seccomp profiles must lie below this directory.
    pub seccomp_profile_root: PathBuf,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        SecuritySettings {
            seccomp_profile_root: PathBuf::from(DEFAULT_SECCOMP_PROFILE_ROOT),
        }
    }
}

/// The five capability sets, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
    /// Inheritable set.
    pub inheritable: Vec<String>,
    /// Ambient set.
    pub ambient: Vec<String>,
}

impl CapSets {
    /// The guest's form.
    pub fn to_guest(&self) -> pb::Capabilities {
        pb::Capabilities {
            bounding: self.bounding.clone(),
            effective: self.effective.clone(),
            permitted: self.permitted.clone(),
            inheritable: self.inheritable.clone(),
            ambient: self.ambient.clone(),
        }
    }
}

/// A container's security context, ready for the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Capability sets.
    pub caps: CapSets,
    /// Compiled seccomp filter (empty: none).
    pub seccomp_filter: Vec<u8>,
    /// Masked paths.
    pub masked_paths: Vec<String>,
    /// Read-only paths.
    pub readonly_paths: Vec<String>,
    /// The pod's user namespace.
    pub userns: Option<UserNamespaceConfig>,
}

/// Resolves container `c` of pod `pod`.
pub fn apply(
    c: &ContainerConfig,
    pod: &PodConfig,
    settings: &SecuritySettings,
) -> Result<Applied, SecurityError> {
    let s = &c.security;
    if s.userns.is_some() && s.userns != pod.security.userns {
        return Err(SecurityError::UserNamespaceMismatch);
    }
    if s.privileged {
        if !pod.security.privileged {
            return Err(SecurityError::PrivilegedInUnprivilegedPod);
        }
        // containerd's WithPrivileged: every capability, no filter, nothing masked.
        let all: Vec<String> = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        return Ok(Applied {
            caps: CapSets {
                bounding: all.clone(),
                effective: all.clone(),
                permitted: all,
                ..Default::default()
            },
            ..Default::default()
        });
    }
    let caps = capability_sets(s.capabilities.as_ref());
    let seccomp_filter = seccomp_filter(&s.seccomp, &caps.effective, settings)?;
    let or_default = |list: &[String], default: &[&str]| {
        if list.is_empty() {
            default.iter().map(|p| p.to_string()).collect()
        } else {
            list.to_vec()
        }
    };
    Ok(Applied {
        seccomp_filter,
        masked_paths: or_default(&s.masked_paths, &DEFAULT_MASKED_PATHS),
        readonly_paths: or_default(&s.readonly_paths, &DEFAULT_READONLY_PATHS),
        caps,
        userns: pod.security.userns.clone(),
    })
}

/// The capability sets containerd gives a container: the default set, then "ALL"
/// added, "ALL" dropped, the named additions and the named drops, in that order, in
/// bounding, effective and permitted; ambient capabilities also inheritable. An
/// ambient capability outside the permitted set is left out of the ambient set (the
/// kernel refuses to raise it; runc skips it the same way).
pub fn capability_sets(c: Option<&CapabilitiesConfig>) -> CapSets {
    let mut set: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let mut ambient = Vec::new();
    if let Some(c) = c {
        if c.add.iter().any(|n| n == "ALL") {
            set = ALL_CAPABILITIES.to_vec();
        }
        if c.drop.iter().any(|n| n == "ALL") {
            set.clear();
        }
        for n in c.add.iter().filter(|n| *n != "ALL") {
            if !set.contains(&n.as_str()) {
                set.push(n);
            }
        }
        set.retain(|have| !c.drop.iter().any(|d| d == have));
        for n in &c.add_ambient {
            if !ambient.contains(n) {
                ambient.push(n.clone());
            }
        }
    }
    // Bit order, so the sets read the same whatever order the request used.
    set.sort_by_key(|n| ALL_CAPABILITIES.iter().position(|a| a == n));
    let set: Vec<String> = set.into_iter().map(str::to_owned).collect();
    CapSets {
        inheritable: ambient.clone(),
        ambient: ambient.into_iter().filter(|a| set.contains(a)).collect(),
        bounding: set.clone(),
        effective: set.clone(),
        permitted: set,
    }
}

/// Compiled programs by (profile source digest, capability set): compiling the
/// default profile with libseccomp takes tens of milliseconds, which container start
/// must not pay every time. Bounded; emptied when full.
type ProgramCache = HashMap<([u8; 32], Vec<String>), Arc<Vec<u8>>>;

/// Most programs kept.
const MAX_CACHED_PROGRAMS: usize = 64;

fn program_cache() -> &'static Mutex<ProgramCache> {
    static CACHE: OnceLock<Mutex<ProgramCache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn seccomp_filter(
    profile: &SeccompProfile,
    caps: &[String],
    settings: &SecuritySettings,
) -> Result<Vec<u8>, SecurityError> {
    let (what, source) = match profile {
        SeccompProfile::Unconfined => return Ok(Vec::new()),
        SeccompProfile::RuntimeDefault => ("RuntimeDefault".to_owned(), None),
        SeccompProfile::Localhost(path) => (
            format!("{path:?}"),
            Some(read_profile(
                Path::new(path),
                &settings.seccomp_profile_root,
            )?),
        ),
    };
    // A panic elsewhere leaves the map valid: carry on with it.
    let cache_lock = || program_cache().lock().unwrap_or_else(|p| p.into_inner());
    let digest: [u8; 32] = Sha256::digest(source.as_deref().unwrap_or(b"RuntimeDefault")).into();
    let key = (digest, caps.to_vec());
    if let Some(p) = cache_lock().get(&key) {
        return Ok(p.as_ref().clone());
    }
    let parsed = match &source {
        None => vmlet_seccomp::Profile::runtime_default(),
        Some(bytes) => vmlet_seccomp::Profile::from_json(bytes),
    }
    .map_err(|source| SecurityError::ProfileParse {
        what: what.clone(),
        source,
    })?;
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let program = vmlet_seccomp::compile(&parsed, &caps)
        .map_err(|source| SecurityError::ProfileCompile { what, source })?;
    let mut cache = cache_lock();
    if cache.len() >= MAX_CACHED_PROGRAMS {
        cache.clear();
    }
    cache.insert(key, Arc::new(program.clone()));
    Ok(program)
}

/// Reads a Localhost profile, which must resolve (symbolic links followed) to a
/// regular file below `root`.
fn read_profile(path: &Path, root: &Path) -> Result<Vec<u8>, SecurityError> {
    let read = |source| SecurityError::ProfileRead {
        path: path.to_owned(),
        source,
    };
    let outside = || SecurityError::ProfileOutsideRoot {
        path: path.to_owned(),
        root: root.to_owned(),
    };
    let root = root.canonicalize().map_err(|_| outside())?;
    let real = path.canonicalize().map_err(read)?;
    if !real.starts_with(&root) {
        return Err(outside());
    }
    let file = std::fs::File::open(&real).map_err(read)?;
    if !file.metadata().map_err(read)?.is_file() {
        return Err(read(std::io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(SecurityError::ProfileTooLarge(path.to_owned()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str], ambient: &[&str]) -> CapSets {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        capability_sets(Some(&CapabilitiesConfig {
            add: v(add),
            drop: v(drop),
            add_ambient: v(ambient),
        }))
    }

    #[test]
    fn default_set_without_capabilities() {
        let c = capability_sets(None);
        assert_eq!(c.bounding.len(), 14);
        assert!(c.effective.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(c.bounding, c.permitted);
        assert!(c.inheritable.is_empty() && c.ambient.is_empty());
    }

    #[test]
    fn all_then_names_in_containerd_order() {
        let c = caps(&["CAP_NET_ADMIN"], &["ALL"], &[]);
        assert_eq!(c.effective, ["CAP_NET_ADMIN"]);
        let c = caps(&["ALL"], &["CAP_CHOWN"], &[]);
        assert_eq!(c.bounding.len(), 40);
        assert!(!c.bounding.contains(&"CAP_CHOWN".to_string()));
        let c = caps(&[], &["ALL"], &[]);
        assert!(c.bounding.is_empty() && c.permitted.is_empty());
        let c = caps(&["CAP_SYS_ADMIN"], &["CAP_MKNOD"], &[]);
        assert_eq!(c.bounding.len(), 14);
        assert!(c.bounding.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!c.bounding.contains(&"CAP_MKNOD".to_string()));
    }

    #[test]
    fn ambient_needs_permitted() {
        let c = caps(
            &["CAP_NET_ADMIN"],
            &["ALL"],
            &["CAP_NET_ADMIN", "CAP_SYS_TIME"],
        );
        assert_eq!(c.ambient, ["CAP_NET_ADMIN"]);
        assert_eq!(c.inheritable, ["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
    }

    #[test]
    fn privileged_needs_a_privileged_pod() {
        let mut c = ContainerConfig::default();
        c.security.privileged = true;
        let mut pod = PodConfig::default();
        let settings = SecuritySettings {
            seccomp_profile_root: PathBuf::from("/nonexistent"),
        };
        assert!(matches!(
            apply(&c, &pod, &settings),
            Err(SecurityError::PrivilegedInUnprivilegedPod)
        ));
        pod.security.privileged = true;
        let a = apply(&c, &pod, &settings).unwrap();
        assert_eq!(a.caps.bounding.len(), 41);
        assert!(a.seccomp_filter.is_empty() && a.masked_paths.is_empty());
    }

    #[test]
    fn containers_run_in_their_pods_user_namespace() {
        use vmlet_cri::runtime::IdMap;
        let ns = |host_id| UserNamespaceConfig {
            uids: vec![IdMap {
                container_id: 0,
                host_id,
                length: 65536,
            }],
            gids: vec![IdMap {
                container_id: 0,
                host_id,
                length: 65536,
            }],
        };
        let settings = SecuritySettings {
            seccomp_profile_root: PathBuf::from("/nonexistent"),
        };
        let mut pod = PodConfig::default();
        pod.security.userns = Some(ns(65536));
        // The kubelet repeats the pod's options on the container, or sends none.
        let mut c = ContainerConfig::default();
        assert_eq!(apply(&c, &pod, &settings).unwrap().userns, Some(ns(65536)));
        c.security.userns = Some(ns(65536));
        assert_eq!(apply(&c, &pod, &settings).unwrap().userns, Some(ns(65536)));
        c.security.userns = Some(ns(131_072));
        assert!(matches!(
            apply(&c, &pod, &settings),
            Err(SecurityError::UserNamespaceMismatch)
        ));
        pod.security.userns = None;
        assert!(apply(&c, &pod, &settings).is_err());
    }

    #[test]
    fn masked_paths_default_when_empty() {
        let settings = SecuritySettings {
            seccomp_profile_root: PathBuf::from("/nonexistent"),
        };
        let mut c = ContainerConfig::default();
        let a = apply(&c, &PodConfig::default(), &settings).unwrap();
        assert!(a.masked_paths.contains(&"/proc/kcore".to_string()));
        assert!(a.readonly_paths.contains(&"/proc/sys".to_string()));
        assert!(a.seccomp_filter.is_empty());
        c.security.masked_paths = vec!["/proc/x".into()];
        let a = apply(&c, &PodConfig::default(), &settings).unwrap();
        assert_eq!(a.masked_paths, ["/proc/x"]);
    }

    #[test]
    fn localhost_profiles_stay_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seccomp");
        std::fs::create_dir(&root).unwrap();
        let outside = dir.path().join("outside.json");
        std::fs::write(&outside, br#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link.json")).unwrap();
        let settings = SecuritySettings {
            seccomp_profile_root: root.clone(),
        };
        let mut c = ContainerConfig::default();
        for p in [outside.clone(), root.join("link.json")] {
            c.security.seccomp = SeccompProfile::Localhost(p.display().to_string());
            let e = apply(&c, &PodConfig::default(), &settings).unwrap_err();
            assert!(matches!(e, SecurityError::ProfileOutsideRoot { .. }), "{e}");
        }
        std::fs::write(root.join("bad.json"), b"{not json").unwrap();
        c.security.seccomp = SeccompProfile::Localhost(root.join("bad.json").display().to_string());
        let e = apply(&c, &PodConfig::default(), &settings).unwrap_err();
        assert!(matches!(e, SecurityError::ProfileParse { .. }), "{e}");
        c.security.seccomp =
            SeccompProfile::Localhost(root.join("missing.json").display().to_string());
        let e = apply(&c, &PodConfig::default(), &settings).unwrap_err();
        assert!(matches!(e, SecurityError::ProfileRead { .. }), "{e}");
        std::fs::write(
            root.join("deny-mkdir.json"),
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        )
        .unwrap();
        c.security.seccomp =
            SeccompProfile::Localhost(root.join("deny-mkdir.json").display().to_string());
        let a = apply(&c, &PodConfig::default(), &settings).unwrap();
        assert!(!a.seccomp_filter.is_empty() && a.seccomp_filter.len().is_multiple_of(8));
    }

    #[test]
    fn programs_are_cached_by_content_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SecuritySettings {
            seccomp_profile_root: dir.path().to_owned(),
        };
        let f = dir.path().join("p.json");
        let deny = |call: &str| {
            format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["{call}"],"action":"SCMP_ACT_ERRNO"}}]}}"#
            )
        };
        std::fs::write(&f, deny("mkdir")).unwrap();
        let profile = SeccompProfile::Localhost(f.display().to_string());
        let caps = capability_sets(None).effective;
        let a = seccomp_filter(&profile, &caps, &settings).unwrap();
        assert_eq!(seccomp_filter(&profile, &caps, &settings).unwrap(), a);
        // A changed file is a new program, not the cached one.
        std::fs::write(&f, deny("rmdir")).unwrap();
        assert_ne!(seccomp_filter(&profile, &caps, &settings).unwrap(), a);
        let rd = SeccompProfile::RuntimeDefault;
        let some = seccomp_filter(&rd, &caps, &settings).unwrap();
        let all = capability_sets(Some(&CapabilitiesConfig {
            add: vec!["ALL".into()],
            ..Default::default()
        }))
        .effective;
        // CAP_SYS_ADMIN opens more of the default profile: another program.
        assert_ne!(seccomp_filter(&rd, &all, &settings).unwrap(), some);
    }

    #[test]
    fn runtime_default_compiles() {
        let settings = SecuritySettings {
            seccomp_profile_root: PathBuf::from("/nonexistent"),
        };
        let mut c = ContainerConfig::default();
        c.security.seccomp = SeccompProfile::RuntimeDefault;
        let a = apply(&c, &PodConfig::default(), &settings).unwrap();
        assert!(a.seccomp_filter.len() >= 8 * 10);
    }
}
