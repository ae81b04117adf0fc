//! Container root file systems: the image's read-only block device as the lower layer
//! and, for each container, an upper and a work directory on the pod's scratch disk (or
//! in guest memory), joined by overlayfs. Image and scratch drives are found by their
//! virtio-blk serial and mounted once, shared by every container that uses them.
//!
//! Layout under [`RUN_DIR`]:
//!
//! ```text
//! images/<serial>          an image drive, read-only
//! scratch/<serial>         the scratch disk
//! scratch/<serial>/layers/<id>/{upper,work}   a container's writable layer
//! layers/<id>/{upper,work} the same in guest memory, without a scratch disk
//! containers/<id>/rootfs   the container's root (the overlay mount)
//! containers/<id>/lower    the image idmapped for the container's user namespace
//! ```

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::spec::{RootfsSpec, UserNs};

/// vmlet-init's own directory (a tmpfs: `/run`).
pub const RUN_DIR: &str = "/run/vmlet";

/// A root file system operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// No block device has the serial.
    #[error("no drive with serial {0:?} (is it attached to the VM?)")]
    NoDevice(String),
    /// A mount failed.
    #[error("cannot mount {what} {source_path} on {target}: {errno}")]
    Mount {
        /// What it is.
        what: &'static str,
        /// The device or directory.
        source_path: String,
        /// The mount point.
        target: PathBuf,
        /// Why.
        errno: nix::Error,
    },
    /// A directory could not be made.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The image has no such subdirectory.
    #[error("the image has no directory {0}")]
    NoSubdir(PathBuf),
    /// The container's user namespace could not be made.
    #[error(transparent)]
    Userns(#[from] super::userns::UsernsError),
    /// The image could not be mounted idmapped.
    #[error("cannot mount the image {path} idmapped for the container's user namespace: {source}")]
    Idmap {
        /// The image directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The writable layer's root could not be given the image root's owner.
    #[error("cannot give {path} the owner of the image's root: {errno}")]
    Chown {
        /// The upper directory.
        path: PathBuf,
        /// Why.
        errno: nix::Error,
    },
}

/// Finds the block device whose virtio-blk serial is `serial`.
pub fn find_device(serial: &str) -> Result<PathBuf, RootfsError> {
    let entries =
        std::fs::read_dir("/sys/block").map_err(|_| RootfsError::NoDevice(serial.to_owned()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(found) = std::fs::read_to_string(entry.path().join("serial")) else {
            continue;
        };
        if found.trim_end_matches(['\n', '\0']) == serial {
            return Ok(Path::new("/dev").join(name));
        }
    }
    Err(RootfsError::NoDevice(serial.to_owned()))
}

fn mkdirs(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::Dir {
        path: path.to_owned(),
        source,
    })
}

fn do_mount(
    what: &'static str,
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mkdirs(target)?;
    mount(Some(source), target, fstype, flags, data).map_err(|errno| RootfsError::Mount {
        what,
        source_path: source.display().to_string(),
        target: target.to_owned(),
        errno,
    })
}

/// Mounted drives, shared by containers.
#[derive(Debug, Default)]
pub struct Drives {
    /// Image drives by serial: mount point and the number of containers using it.
    images: HashMap<String, (PathBuf, usize)>,
    /// Scratch drives by serial: mount point (kept for the life of the guest).
    scratch: HashMap<String, PathBuf>,
}

/// A container's mounted root file system.
#[derive(Debug)]
pub struct Rootfs {
    /// The root directory (an overlay).
    pub root: PathBuf,
    /// The writable layer's upper directory, if any.
    pub upper: Option<PathBuf>,
    /// The container's user namespace, which its processes join.
    pub userns: Option<OwnedFd>,
    /// The image seen through the user namespace's idmapping (the overlay's lower
    /// layer), if the container has one.
    idmapped_lower: Option<PathBuf>,
    layer: Option<PathBuf>,
    image_serial: String,
}

impl Drives {
    fn image(&mut self, spec: &RootfsSpec) -> Result<PathBuf, RootfsError> {
        if let Some((path, users)) = self.images.get_mut(&spec.image_serial) {
            *users += 1;
            return Ok(path.clone());
        }
        let dev = find_device(&spec.image_serial)?;
        let target = Path::new(RUN_DIR).join("images").join(&spec.image_serial);
        do_mount(
            "image",
            &dev,
            &target,
            Some(spec.image_fstype.name()),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None,
        )?;
        self.images
            .insert(spec.image_serial.clone(), (target.clone(), 1));
        Ok(target)
    }

    /// [`Self::image`] for an image volume.
    pub fn image_mount(&mut self, spec: &RootfsSpec) -> Result<PathBuf, RootfsError> {
        self.image(spec)
    }

    /// [`Self::release_image`] for an image volume.
    pub fn release_image_mount(&mut self, serial: &str) {
        self.release_image(serial);
    }

    fn release_image(&mut self, serial: &str) {
        let Some((path, users)) = self.images.get_mut(serial) else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            if let Err(e) = umount2(path.as_path(), MntFlags::MNT_DETACH) {
                crate::console::error(format_args!("cannot unmount {}: {e}", path.display()));
            }
            self.images.remove(serial);
        }
    }

    fn layers_dir(&mut self, scratch: Option<&str>) -> Result<PathBuf, RootfsError> {
        let Some(serial) = scratch else {
            return Ok(Path::new(RUN_DIR).join("layers"));
        };
        Ok(self.scratch_dir(serial)?.join("layers"))
    }

    /// Where scratch disk `serial` is mounted (mounted now if it is not yet).
    pub fn scratch_dir(&mut self, serial: &str) -> Result<PathBuf, RootfsError> {
        if let Some(path) = self.scratch.get(serial) {
            return Ok(path.clone());
        }
        let dev = find_device(serial)?;
        let target = Path::new(RUN_DIR).join("scratch").join(serial);
        do_mount(
            "scratch disk",
            &dev,
            &target,
            Some("ext4"),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None,
        )?;
        self.scratch.insert(serial.to_owned(), target.clone());
        Ok(target)
    }

    /// Mounts container `id`'s root file system.
    /// Mounts container `id`'s root file system, seen through `userns`'s mappings if
    /// the container has its own user namespace.
    pub fn mount_rootfs(
        &mut self,
        id: &str,
        spec: &RootfsSpec,
        userns: Option<&UserNs>,
    ) -> Result<Rootfs, RootfsError> {
        let image = self.image(spec)?;
        let mut rootfs = Rootfs {
            root: Path::new(RUN_DIR)
                .join("containers")
                .join(id)
                .join("rootfs"),
            upper: None,
            userns: None,
            idmapped_lower: None,
            layer: None,
            image_serial: spec.image_serial.clone(),
        };
        let result = self.mount_layers(id, spec, &image, userns, &mut rootfs);
        if let Err(e) = result {
            self.unmount_rootfs(rootfs);
            return Err(e);
        }
        Ok(rootfs)
    }

    fn mount_layers(
        &mut self,
        id: &str,
        spec: &RootfsSpec,
        image: &Path,
        userns: Option<&UserNs>,
        rootfs: &mut Rootfs,
    ) -> Result<(), RootfsError> {
        let mut lower = image.join(&spec.image_subdir);
        if !lower.is_dir() {
            return Err(RootfsError::NoSubdir(spec.image_subdir.clone()));
        }
        if let Some(ns) = userns {
            let fd = super::userns::create(ns)?;
            let target = rootfs.root.with_file_name("lower");
            mkdirs(&target)?;
            let idmap_err = |source| RootfsError::Idmap {
                path: lower.clone(),
                source,
            };
            match super::userns::idmapped_bind(&lower, &target, fd.as_fd(), false) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(idmap_err(io::Error::other(
                        "its file system does not support idmapped mounts",
                    )))
                }
                Err(e) => return Err(idmap_err(e)),
            }
            rootfs.idmapped_lower = Some(target.clone());
            rootfs.userns = Some(fd);
            lower = target;
        }
        // A read-only root gets its writable layer too: the container's mount points
        // (/proc, /dev, its CRI mounts) may be missing from the image and are made
        // in it; the root is made read-only after the mounts, as runc does.
        let layer = self.layers_dir(spec.scratch_serial.as_deref())?.join(id);
        // A leftover of an earlier container with this ID must not leak into this one.
        let _ = std::fs::remove_dir_all(&layer);
        rootfs.layer = Some(layer.clone());
        let upper = layer.join("upper");
        let work = layer.join("work");
        mkdirs(&upper)?;
        mkdirs(&work)?;
        if rootfs.userns.is_some() {
            // The overlay's root takes its owner and mode from the upper directory:
            // the image root's, as the idmapped lower layer shows them, not vmlet-init's
            // (unmapped inside, so even the container's root could not write there).
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::metadata(&lower).map_err(|source| RootfsError::Dir {
                path: lower.clone(),
                source,
            })?;
            let chown_err = |errno| RootfsError::Chown {
                path: upper.clone(),
                errno,
            };
            nix::unistd::chown(
                &upper,
                Some(nix::unistd::Uid::from_raw(md.uid())),
                Some(nix::unistd::Gid::from_raw(md.gid())),
            )
            .map_err(chown_err)?;
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &upper,
                nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(chown_err)?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        do_mount(
            "overlay",
            Path::new("overlay"),
            &rootfs.root,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        )?;
        rootfs.upper = Some(upper);
        Ok(())
    }

    /// Unmounts a root file system and deletes its writable layer. Best effort: what
    /// cannot be undone is reported on the console.
    pub fn unmount_rootfs(&mut self, rootfs: Rootfs) {
        let mounts = std::iter::once(&rootfs.root).chain(rootfs.idmapped_lower.as_ref());
        for mount in mounts {
            match umount2(mount.as_path(), MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => {
                    crate::console::error(format_args!("cannot unmount {}: {e}", mount.display()))
                }
            }
        }
        if let Some(container_dir) = rootfs.root.parent() {
            let _ = std::fs::remove_dir_all(container_dir);
        }
        if let Some(layer) = &rootfs.layer {
            if let Err(e) = std::fs::remove_dir_all(layer) {
                if e.kind() != io::ErrorKind::NotFound {
                    crate::console::error(format_args!(
                        "cannot delete writable layer {}: {e}",
                        layer.display()
                    ));
                }
            }
        }
        self.release_image(&rootfs.image_serial);
    }
}

/// Bytes and inodes used under `dir` (not following symlinks, not crossing mounts).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(md) = entry.metadata() else { continue };
            bytes += md.blocks() * 512;
            inodes += 1;
            if md.is_dir() && md.dev() == dev {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![1u8; 10_000]).unwrap();
        let (bytes, inodes) = disk_usage(dir.path());
        assert_eq!(inodes, 2);
        assert!(bytes >= 10_000, "{bytes}");
    }

    #[test]
    fn unknown_serial_is_reported() {
        assert!(matches!(
            find_device("no-such-serial-x"),
            Err(RootfsError::NoDevice(_))
        ));
    }
}
