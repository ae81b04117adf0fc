//! Pod-wide guest configuration the host asks for: hostname, network, DNS, sysctls,
//! files in the shared directory, and what a guest restored from a snapshot must
//! renew ([`restore`]).

pub mod netconf;
pub mod restore;
pub mod volumes;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::container::shared_dir;
use crate::container::spec::{relative_path, SpecError};
use crate::pid1::cmdline::valid_hostname;

/// A configuration request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A malformed value.
    #[error("{0}")]
    Invalid(String),
    /// A bad path.
    #[error(transparent)]
    Path(#[from] SpecError),
    /// Network configuration failed.
    #[error(transparent)]
    Net(#[from] netconf::NetconfError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ConfigError {
    let what = what.into();
    move |source| ConfigError::Sys { what, source }
}

/// Sets the hostname (the pod's UTS namespace is the guest's) and records it in the
/// shared directory for containers' `/etc/hostname`.
pub fn set_hostname(name: &str) -> Result<(), ConfigError> {
    if !valid_hostname(name) {
        return Err(ConfigError::Invalid(format!("invalid hostname {name:?}")));
    }
    nix::unistd::sethostname(name).map_err(|e| ConfigError::Sys {
        what: "sethostname".into(),
        source: e.into(),
    })?;
    write_shared(
        Path::new("hostname"),
        format!("{name}\n").as_bytes(),
        0o644,
        0,
        0,
    )
}

/// Writes `resolv.conf` into the shared directory.
pub fn set_dns(
    servers: &[String],
    searches: &[String],
    options: &[String],
) -> Result<(), ConfigError> {
    let mut text = String::new();
    for s in servers {
        s.parse::<std::net::IpAddr>()
            .map_err(|_| ConfigError::Invalid(format!("DNS server {s:?} is not an IP address")))?;
        text.push_str(&format!("nameserver {s}\n"));
    }
    let word = |w: &String, what: &str| {
        if w.is_empty() || w.contains(char::is_whitespace) {
            Err(ConfigError::Invalid(format!("invalid DNS {what} {w:?}")))
        } else {
            Ok(())
        }
    };
    for s in searches {
        word(s, "search domain")?;
    }
    for o in options {
        word(o, "option")?;
    }
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    write_shared(Path::new("resolv.conf"), text.as_bytes(), 0o644, 0, 0)
}

/// The sysctl prefixes a pod may set: those namespaced per network or IPC namespace,
/// as Kubernetes' "safe" and namespaced sysctls are.
const SYSCTL_PREFIXES: [&str; 4] = ["net.", "kernel.shm", "kernel.msg", "fs.mqueue."];

/// The /proc/sys path of sysctl `key`, if it may be set.
pub fn sysctl_path(key: &str) -> Result<PathBuf, ConfigError> {
    let allowed = key == "kernel.sem" || SYSCTL_PREFIXES.iter().any(|p| key.starts_with(p));
    let clean = key.split(['.', '/']).all(|part| {
        !part.is_empty()
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if !allowed || !clean {
        return Err(ConfigError::Invalid(format!(
            "sysctl {key:?} is not allowed (only namespaced net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)"
        )));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// Sets one sysctl.
pub fn set_sysctl(key: &str, value: &str) -> Result<(), ConfigError> {
    let path = sysctl_path(key)?;
    if value.contains('\n') {
        return Err(ConfigError::Invalid(format!(
            "sysctl {key} value contains a newline"
        )));
    }
    std::fs::write(&path, value).map_err(sys(format!("set sysctl {key}={value}")))
}

/// Writes a file under the shared directory atomically (temp file and rename).
pub fn write_shared(
    rel: &Path,
    data: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), ConfigError> {
    let rel = relative_path("path", &rel.to_string_lossy())?;
    if rel.as_os_str().is_empty() {
        return Err(ConfigError::Invalid("path is required".into()));
    }
    let dest = shared_dir().join(&rel);
    let parent = dest.parent().unwrap_or(Path::new("/"));
    // Refuse to follow a symlink that a container may have planted in a shared dir.
    let mut dir = shared_dir();
    for c in rel.parent().into_iter().flat_map(|p| p.components()) {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(ConfigError::Invalid(format!(
                    "{} is a symlink",
                    dir.display()
                )))
            }
            _ => {}
        }
    }
    std::fs::create_dir_all(parent).map_err(sys(format!("create {}", parent.display())))?;
    let mode = if mode == 0 { 0o644 } else { mode & 0o7777 };
    let tmp = parent.join(format!(
        ".{}.tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        nix::unistd::fchown(&f, Some(uid.into()), Some(gid.into()))?;
        drop(f);
        std::fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ConfigError::Sys {
            what: format!("write {}", dest.display()),
            source: e,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_limited_to_namespaced_keys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        sysctl_path("kernel.shmmax").unwrap();
        sysctl_path("kernel.sem").unwrap();
        for bad in [
            "kernel.panic",
            "vm.overcommit_memory",
            "net..x",
            "net/../../kernel/panic",
            "net.ipv4.a b",
        ] {
            let e = sysctl_path(bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid(m)
                    if m.starts_with(&format!("sysctl {bad:?} is not allowed"))),
                "{bad}: {e:?}"
            );
        }
    }
}
