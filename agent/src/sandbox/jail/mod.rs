//! The jail each VMM runs in, set up by vmletd between clone and exec (Firecracker's
//! jailer is the model): an unprivileged uid/gid of its own ([`uids`]), a new mount
//! namespace whose root is a small tmpfs holding only what the VMM opens, bound at
//! the paths it has on the host ([`plan`]: kernel, initramfs, the pod's disks,
//! console and exit record, its socket directory, the shared libraries its binary
//! loads, and its own `/dev/kvm` and `/dev/net/tun` nodes), a new PID and IPC
//! namespace, the pod's network namespace, rlimits, no capabilities, `no_new_privs`
//! and no inherited descriptor but stdin/stdout/stderr ([`process`]).
//!
//! Mirroring host paths keeps the VMM's command line and its sockets where vmletd
//! and a restarted vmletd look for them: nothing else changes for a jailed pod.
//! Image files swapped into a running VM are sent to the VMM opened, over its control
//! socket (see `vmm::control_with_file`): binding them into a live mount namespace
//! would need a helper process to enter it, and a file descriptor gives the VMM that
//! one file and nothing else.

pub mod plan;
pub mod process;
pub mod uids;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SandboxError;

/// `[jail]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JailConfig {
    /// Jail each VMM (off: the VMM runs as root in vmletd's mount and PID namespaces,
    /// for hosts that cannot, and to measure what the jail costs).
    pub enabled: bool,
    /// First uid (and gid) of the range pods' VMMs run as.
    pub first_uid: u32,
    /// How many uids the range holds: at most this many pods at once.
    pub uid_count: u32,
    /// RLIMIT_NOFILE of a VMM.
    pub max_open_files: u64,
    /// Each VMM in a PID namespace of its own, as its init: it sees and signals no
    /// other process; from outside, only the signals it handles (SIGTERM, SIGINT) and
    /// SIGKILL reach it (a fault of its own still ends it).
    pub pid_namespace: bool,
    /// Directories of the shared libraries vmlet-vmm loads, bound read-only into each
    /// jail at the same path (a symbolic link is bound as what it points to). Missing
    /// ones are skipped; a statically linked vmlet-vmm needs none.
    pub library_dirs: Vec<PathBuf>,
}

/// First uid of the default range: far above the ranges distributions hand to
/// users and to their subordinate ids, below 2^31 (signed-uid tools).
pub const DEFAULT_FIRST_UID: u32 = 1_900_000_000;

impl Default for JailConfig {
    fn default() -> Self {
        let arch = std::env::consts::ARCH;
        JailConfig {
            enabled: true,
            first_uid: DEFAULT_FIRST_UID,
            uid_count: 65536,
            max_open_files: 4096,
            pid_namespace: true,
            library_dirs: vec![
                "/lib64".into(),
                format!("/lib/{arch}-linux-gnu").into(),
                format!("/usr/lib/{arch}-linux-gnu").into(),
            ],
        }
    }
}

impl JailConfig {
    /// Rejects a range or limit that cannot work.
    pub fn check(&self) -> Result<(), String> {
        if self.first_uid == 0 {
            return Err("jail.first_uid must not be 0 (root)".into());
        }
        if self.uid_count == 0 {
            return Err("jail.uid_count must be at least 1".into());
        }
        // u32::MAX is (uid_t)-1, "no change" to setresuid.
        if u64::from(self.first_uid) + u64::from(self.uid_count) > u64::from(u32::MAX) {
            return Err(format!(
                "jail.first_uid + jail.uid_count must stay below {} (got {} + {})",
                u32::MAX,
                self.first_uid,
                self.uid_count
            ));
        }
        if self.max_open_files < 64 {
            return Err(format!(
                "jail.max_open_files must be at least 64 (got {})",
                self.max_open_files
            ));
        }
        if let Some(d) = self.library_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(format!(
                "jail.library_dirs must be absolute (got {})",
                d.display()
            ));
        }
        Ok(())
    }
}

/// How one VMM is jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// The directory its root (a tmpfs in its mount namespace) is mounted on.
    pub root: PathBuf,
    /// See [`JailConfig::library_dirs`].
    pub library_dirs: Vec<PathBuf>,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// See [`JailConfig::pid_namespace`].
    pub pid_namespace: bool,
    /// RLIMIT_FSIZE: the largest file it may write (its scratch disk is the largest;
    /// its console and logs are bounded by the same).
    pub max_file_bytes: u64,
}

/// Hands a file or directory the VMM must write (or, being unprivileged, read) to
/// its uid with `mode`.
pub fn give(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |op| {
        move |source| SandboxError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("chown"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"))
}

/// Creates `path` (empty, mode 0600) for the VMM to write unless it exists, and
/// hands it to the VMM's uid.
pub fn give_new_file(path: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SandboxError::Io {
            op: "create",
            path: path.to_owned(),
            source,
        })?;
    give(path, uid, gid, 0o600)
}
