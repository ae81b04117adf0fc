//! The device nodes of a container's `/dev`: the standard few for every container,
//! and every device of the guest for a privileged one, created with `mknod` as runc
//! does outside a user namespace (`libcontainer/rootfs_linux.go`, `createDevices`;
//! the guest's devices as `libcontainer/devices.HostDevices` lists the host's).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// Character devices every container gets: name, major, minor (mode 0666, root).
pub const STANDARD: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Folders of the guest's `/dev` a privileged container does not get (it has its own
/// devpts, shm and mqueue, and `fd` holds links), as runc skips them on a host.
const SKIP_DIRS: [&str; 4] = ["pts", "shm", "mqueue", "fd"];
/// The guest's console stays the guest's.
const SKIP_FILES: [&str; 1] = ["console"];
/// Deepest folder level copied, and most nodes: the guest's `/dev` is small.
const MAX_DEPTH: usize = 8;
const MAX_NODES: usize = 4096;

/// A device node that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct DevError {
    /// What was being done.
    pub what: &'static str,
    /// The node or folder.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DevError + 'a {
    move |source| DevError {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Creates a device node and gives it `perm` (not narrowed by the umask), `uid` and
/// `gid`.
fn make(path: &Path, kind: SFlag, perm: u32, rdev: u64, owner: (u32, u32)) -> Result<(), DevError> {
    mknod(path, kind, Mode::from_bits_truncate(perm), rdev)
        .map_err(|e| err("mknod", path)(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))
        .map_err(err("chmod", path))?;
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1)).map_err(err("chown", path))
}

/// The standard nodes in `dev`.
pub fn create_standard(dev: &Path) -> Result<(), DevError> {
    for (name, major, minor) in STANDARD {
        make(
            &dev.join(name),
            SFlag::S_IFCHR,
            0o666,
            makedev(major, minor),
            (0, 0),
        )?;
    }
    Ok(())
}

/// Copies every character and block device under `from` (the guest's `/dev`) into
/// `to`, with its folders, mode and owner; nodes that exist in `to` are kept.
pub fn copy_all(from: &Path, to: &Path) -> Result<(), DevError> {
    let mut count = 0;
    copy_dir(from, to, 0, &mut count)
}

fn copy_dir(from: &Path, to: &Path, depth: usize, count: &mut usize) -> Result<(), DevError> {
    let entries = std::fs::read_dir(from).map_err(err("list", from))?;
    for entry in entries {
        let entry = entry.map_err(err("list", from))?;
        let name = entry.file_name();
        let Ok(md) = entry.metadata() else { continue };
        let (src, dst) = (entry.path(), to.join(&name));
        let ft = md.file_type();
        if ft.is_dir() {
            if depth + 1 >= MAX_DEPTH || SKIP_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            std::fs::create_dir_all(&dst).map_err(err("create", &dst))?;
            copy_dir(&src, &dst, depth + 1, count)?;
            continue;
        }
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else {
            continue;
        };
        if SKIP_FILES.iter().any(|s| name == *s) || dst.symlink_metadata().is_ok() {
            continue;
        }
        *count += 1;
        if *count > MAX_NODES {
            return Ok(());
        }
        make(
            &dst,
            kind,
            md.mode() & 0o7777,
            md.rdev(),
            (md.uid(), md.gid()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_nodes_are_copied() {
        // Unprivileged test runs cannot mknod; the walk is still checked on files.
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("pts")).unwrap();
        std::fs::create_dir_all(from.path().join("net")).unwrap();
        std::fs::write(from.path().join("regular"), "x").unwrap();
        std::os::unix::fs::symlink("regular", from.path().join("link")).unwrap();
        copy_all(from.path(), to.path()).unwrap();
        assert!(to.path().join("net").is_dir());
        assert!(!to.path().join("pts").exists());
        assert!(!to.path().join("regular").exists());
        assert!(!to.path().join("link").exists());
    }
}
