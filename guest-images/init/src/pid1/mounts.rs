//! The file systems every guest has, mounted in order by [`mount_all`].

use std::os::unix::fs::DirBuilderExt;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One mount of the base system.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    /// File system type, also used as the source name.
    pub fstype: &'static str,
    /// Mount point; created (mode 0755) if missing.
    pub target: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system-specific options.
    pub data: Option<&'static str>,
    /// Whether `EBUSY` means "already mounted" and is fine (devtmpfs may have been mounted
    /// by the kernel through `CONFIG_DEVTMPFS_MOUNT`).
    pub busy_ok: bool,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The base mounts, parents before children.
pub const BASE_MOUNTS: &[MountSpec] = &[
    MountSpec {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        busy_ok: false,
    },
    MountSpec {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        busy_ok: false,
    },
    MountSpec {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        busy_ok: true,
    },
    MountSpec {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
        busy_ok: false,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        busy_ok: false,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/tmp",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        busy_ok: false,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/run",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
        busy_ok: false,
    },
    MountSpec {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        busy_ok: false,
    },
];

/// A base mount that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("cannot create mount point {target}: {source}")]
    MountPoint {
        /// The mount point.
        target: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// mount(2) failed.
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// Why.
        source: Errno,
    },
}

/// Mounts [`BASE_MOUNTS`]; returns the failures (the other mounts are still attempted).
pub fn mount_all() -> Vec<MountError> {
    BASE_MOUNTS
        .iter()
        .filter_map(|m| mount_one(m).err())
        .collect()
}

fn mount_one(m: &MountSpec) -> Result<(), MountError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(m.target)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(MountError::MountPoint {
                target: m.target,
                source,
            })
        }
    }
    match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) if m.busy_ok => Ok(()),
        Err(source) => Err(MountError::Mount {
            fstype: m.fstype,
            target: m.target,
            source,
        }),
    }
}

/// Where [`reroot`] binds the initramfs before moving it over `/`.
const REROOT_DIR: &str = "/.vmlet-root";

/// Makes the root directory a mount with a parent.
///
/// The kernel unpacks the initramfs into `rootfs`, the first mount of all, and
/// `pivot_root(2)` refuses to move away from a root mount without a parent (EINVAL).
/// Containers need `pivot_root` (a `chroot` can be escaped), so init binds the
/// initramfs onto a directory, moves that mount over `/` and enters it: the same
/// files, at no copying cost, now in a mount whose parent is `rootfs`.
pub fn reroot() -> Result<(), MountError> {
    let fail = |fstype: &'static str, target: &'static str| {
        move |source| MountError::Mount {
            fstype,
            target,
            source,
        }
    };
    match std::fs::create_dir(REROOT_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(MountError::MountPoint {
                target: REROOT_DIR,
                source,
            })
        }
    }
    mount(
        Some("/"),
        REROOT_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind", REROOT_DIR))?;
    nix::unistd::chdir(REROOT_DIR).map_err(fail("chdir", REROOT_DIR))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(fail("move", "/"))?;
    nix::unistd::chroot(".").map_err(fail("chroot", "/"))?;
    nix::unistd::chdir("/").map_err(fail("chdir", "/"))
}

/// The conventional `/dev` symlinks that devtmpfs does not create. Failures are ignored:
/// they exist already or nothing needs them.
pub fn dev_links() {
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first() {
        for (i, m) in BASE_MOUNTS.iter().enumerate() {
            for later in &BASE_MOUNTS[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", later.target)),
                    "{} is mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
    }
}
