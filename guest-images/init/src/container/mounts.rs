//! A new container's mount namespace, set up by its process between `fork` and
//! `execve`: `/proc`, `/sys`, `/dev` (with the flags runc gives them), the pod's
//! `/etc` files, the requested mounts, `pivot_root`, then the masked and read-only
//! paths (runc's `maskPath` and `readonlyPath`, after the pivot as runc does).

use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::devnodes::{self, DevError};
use super::mount_attr;
use super::spec::MountSpec;

/// What a new container's mount namespace holds.
#[derive(Debug)]
pub struct RootPlan<'a> {
    /// The container's root directory (a mount point).
    pub root: &'a Path,
    /// Extra mounts, in order.
    pub mounts: &'a [MountSpec],
    /// The pod's `/dev/shm`.
    pub shm: &'a Path,
    /// Host-provided files bound read-only over `/etc/<name>` when they exist and no
    /// mount in `mounts` targets them: (guest source, destination).
    pub etc_files: &'a [(PathBuf, &'a str)],
    /// A file bound read-only over the container's
    /// `/proc/sys/kernel/random/boot_id`: the boot ID of a guest restored from a
    /// snapshot, which the kernel's still holds the template's.
    pub boot_id: Option<&'a Path>,
    /// Remount the root read-only at the end.
    pub readonly: bool,
    /// Every guest device in `/dev`, `/sys` writable.
    pub privileged: bool,
    /// Paths hidden: directories by an empty read-only tmpfs, files by `/dev/null`.
    pub masked_paths: &'a [PathBuf],
    /// Paths bound read-only onto themselves.
    pub readonly_paths: &'a [PathBuf],
    /// The container's user namespace: its bind mounts are idmapped through it where
    /// the file system allows.
    pub idmap: Option<BorrowedFd<'a>>,
}

/// Setting up the container's mounts failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// A path inside the container has a symlink loop.
    #[error("too many symlinks in {0}")]
    Symlinks(PathBuf),
    /// A device node could not be made.
    #[error(transparent)]
    Dev(#[from] DevError),
}

fn ctx<E: Into<io::Error>>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> MountError {
    move |e| MountError::Sys {
        what: what(),
        source: e.into(),
    }
}

/// Resolves `path` (absolute, inside the container) under `root`, following symlinks
/// as if `root` were `/`, so that nothing a container image contains can point a
/// mount outside it.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, MountError> {
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(MountError::Symlinks(path.to_owned()));
                }
                let target = std::fs::read_link(root.join(&candidate))
                    .map_err(ctx(|| format!("readlink {}", candidate.display())))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn mkdir_p(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(ctx(|| format!("create {}", path.display())))
}

/// Creates `target` as an empty file (its parents as directories) if it is missing.
fn touch(target: &Path) -> Result<(), MountError> {
    if target.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        mkdir_p(parent)?;
    }
    std::fs::File::create(target)
        .map(drop)
        .map_err(ctx(|| format!("create {}", target.display())))
}

fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(source, target, fstype, flags, data).map_err(ctx(|| {
        format!(
            "mount {} on {}",
            source.map_or_else(
                || fstype.unwrap_or("").to_owned(),
                |s| s.display().to_string()
            ),
            target.display()
        )
    }))
}

/// Binds `source` on `target` (created as a file or directory like `source`),
/// idmapped through `idmap` when given and the file system allows it.
fn bind(
    source: &Path,
    target: &Path,
    flags: MsFlags,
    recursive: bool,
    idmap: Option<BorrowedFd<'_>>,
) -> Result<(), MountError> {
    let is_dir = std::fs::metadata(source)
        .map_err(ctx(|| format!("bind source {}", source.display())))?
        .is_dir();
    if is_dir {
        mkdir_p(target)?;
    } else {
        touch(target)?;
    }
    let mut bind_flags = MsFlags::MS_BIND;
    if recursive {
        bind_flags |= MsFlags::MS_REC;
    }
    let idmapped = match idmap {
        Some(userns) => super::userns::idmapped_bind(source, target, userns, recursive)
            .map_err(ctx(|| format!("idmapped bind of {}", source.display())))?,
        None => false,
    };
    if !idmapped {
        do_mount(Some(source), target, None, bind_flags, None)?;
    }
    let extra = flags - MsFlags::MS_BIND;
    if !extra.is_empty() {
        // Bind mounts take their flags only on a remount.
        do_mount(
            None,
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None,
        )?;
    }
    Ok(())
}

/// The container's root: kernel file systems, `/dev`, the pod's `/etc` files and the
/// requested mounts under `plan.root`, which then becomes `/`; then the read-only and
/// masked paths.
pub fn setup_root(plan: &RootPlan<'_>) -> Result<(), MountError> {
    // Nothing mounted here may propagate back to vmlet-init's namespace.
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_proc_sys(plan.root, plan.privileged, plan.boot_id)?;
    mount_dev(
        &resolve_in_root(plan.root, Path::new("/dev"))?,
        plan.shm,
        plan.privileged,
    )?;
    bind_etc_files(plan)?;
    mount_requested(plan)?;
    pivot_into(plan.root, plan.readonly)?;
    for path in plan.readonly_paths {
        readonly_path(path)?;
    }
    for path in plan.masked_paths {
        mask_path(path)?;
    }
    Ok(())
}

/// Mount flags of the kernel's virtual file systems in a container.
const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The boot ID's file in a `/proc`.
const PROC_BOOT_ID: &str = "sys/kernel/random/boot_id";

/// What to bind over the boot ID of the `/proc` mounted at `proc`: (source, target),
/// if there is a recorded boot ID.
fn boot_id_bind(proc: &Path, boot_id: Option<&Path>) -> Option<(PathBuf, PathBuf)> {
    boot_id.map(|source| (source.to_owned(), proc.join(PROC_BOOT_ID)))
}

/// `/proc` (with the recorded boot ID over the kernel's, if there is one), and `/sys`
/// (read-only unless `privileged`).
fn mount_proc_sys(root: &Path, privileged: bool, boot_id: Option<&Path>) -> Result<(), MountError> {
    let proc = resolve_in_root(root, Path::new("/proc"))?;
    mkdir_p(&proc)?;
    do_mount(None, &proc, Some("proc"), NOSUID_NODEV_NOEXEC, None)?;
    // The fresh proc has no symlinks on the way; a kernel without the file (no
    // sysctl support) has no boot ID to hide.
    if let Some((source, target)) = boot_id_bind(&proc, boot_id) {
        if target.exists() {
            bind(
                &source,
                &target,
                MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
                false,
                None,
            )?;
        }
    }
    let sys = resolve_in_root(root, Path::new("/sys"))?;
    mkdir_p(&sys)?;
    let mut flags = NOSUID_NODEV_NOEXEC;
    if !privileged {
        flags |= MsFlags::MS_RDONLY;
    }
    do_mount(None, &sys, Some("sysfs"), flags, None)
}

/// A fresh `/dev` at `dev` (runc's: tmpfs, nosuid, strictatime): the standard device
/// nodes (every guest device if `privileged`), the container's own devpts (nosuid,
/// noexec), the standard links, the pod's `/dev/shm` (`shm`) and an mqueue (both
/// nosuid, nodev, noexec).
fn mount_dev(dev: &Path, shm: &Path, privileged: bool) -> Result<(), MountError> {
    mkdir_p(dev)?;
    do_mount(
        None,
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    devnodes::create_standard(dev)?;
    if privileged {
        devnodes::copy_all(Path::new("/dev"), dev)?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    do_mount(
        None,
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let links = [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    for (target, link) in links {
        let path = dev.join(link);
        // A privileged container's copy of the guest's /dev may have made some.
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path).map_err(ctx(|| format!("replace /dev/{link}")))?;
        }
        std::os::unix::fs::symlink(target, &path)
            .map_err(ctx(|| format!("symlink /dev/{link}")))?;
    }
    bind(shm, &dev.join("shm"), NOSUID_NODEV_NOEXEC, false, None)?;
    let mqueue = dev.join("mqueue");
    mkdir_p(&mqueue)?;
    do_mount(None, &mqueue, Some("mqueue"), NOSUID_NODEV_NOEXEC, None)
}

/// The pod's `/etc` files (hosts, resolv.conf, hostname), read-only, except where the
/// container mounts its own.
fn bind_etc_files(plan: &RootPlan<'_>) -> Result<(), MountError> {
    for (source, name) in plan.etc_files {
        let dest = Path::new("/etc").join(name);
        if !source.exists() || plan.mounts.iter().any(|m| m.destination == dest) {
            continue;
        }
        bind(
            source,
            &resolve_in_root(plan.root, &dest)?,
            MsFlags::MS_RDONLY,
            false,
            None,
        )?;
    }
    Ok(())
}

/// The container's mounts (binds and file systems), in order, with their propagation.
fn mount_requested(plan: &RootPlan<'_>) -> Result<(), MountError> {
    for m in plan.mounts {
        let target = resolve_in_root(plan.root, &m.destination)?;
        if m.is_bind() {
            let source = match &m.subpath {
                // A subPath of a pod volume: what the containers left there (a
                // symlink among it) cannot point the bind outside the volume.
                Some(sub) => {
                    let s = resolve_in_root(Path::new(&m.source), &Path::new("/").join(sub))?;
                    if s.symlink_metadata().is_err() {
                        mkdir_p(&s)?;
                    }
                    s
                }
                None => PathBuf::from(&m.source),
            };
            bind(&source, &target, m.flags, m.recursive, plan.idmap)?;
        } else {
            mkdir_p(&target)?;
            do_mount(
                Some(Path::new(&m.source)),
                &target,
                Some(&m.fstype),
                m.flags,
                m.data.as_deref(),
            )?;
        }
        if m.recursive_readonly {
            readonly_recursively(&target)?;
        }
        if !m.propagation.is_empty() {
            do_mount(None, &target, None, m.propagation, None)?;
        }
    }
    Ok(())
}

/// Makes the mount at `target` and every mount below it read-only, keeping their
/// other flags.
fn readonly_recursively(target: &Path) -> Result<(), MountError> {
    let what = || format!("make {} read-only recursively", target.display());
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| ctx(what)(io::Error::other(e)))?;
    let recursive = libc::AT_RECURSIVE as libc::c_uint;
    mount_attr::set(libc::AT_FDCWD, &path, recursive, mount_attr::RDONLY, None).map_err(ctx(what))
}

/// Makes `root` the process's `/` (pivot_root, the old root detached), read-only if
/// asked.
fn pivot_into(root: &Path, readonly: bool) -> Result<(), MountError> {
    std::env::set_current_dir(root).map_err(ctx(|| format!("chdir {}", root.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(ctx(|| "pivot_root".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx(|| "detach the old root".into()))?;
    std::env::set_current_dir("/").map_err(ctx(|| "chdir /".into()))?;
    if readonly {
        do_mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// Whether `path` exists (after the pivot: inside the container); `None` when it
/// does not, else whether it is a directory.
fn existing_dir(path: &Path) -> Result<Option<bool>, MountError> {
    match std::fs::metadata(path) {
        Ok(md) => Ok(Some(md.is_dir())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ctx(|| format!("stat {}", path.display()))(e)),
    }
}

/// Binds `path` read-only onto itself, its submounts too; a missing path is skipped.
fn readonly_path(path: &Path) -> Result<(), MountError> {
    if existing_dir(path)?.is_none() {
        return Ok(());
    }
    do_mount(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    readonly_recursively(path)
}

/// Hides `path`: a directory under an empty read-only tmpfs, anything else under
/// `/dev/null`; a missing path is skipped.
fn mask_path(path: &Path) -> Result<(), MountError> {
    match existing_dir(path)? {
        None => Ok(()),
        Some(true) => do_mount(
            None,
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
            None,
        ),
        Some(false) => do_mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            MsFlags::MS_BIND,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("run/real")).unwrap();
        std::os::unix::fs::symlink("/run/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/abs/x")).unwrap(),
            root.join("run/real/x")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/escape/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/slash/../../etc")).unwrap(),
            root.join("etc")
        );
        assert!(matches!(
            resolve_in_root(root, Path::new("/loop")),
            Err(MountError::Symlinks(p)) if p == Path::new("/loop")
        ));
    }

    #[test]
    fn the_recorded_boot_id_covers_procs() {
        let proc = Path::new("/run/vmlet/containers/c/rootfs/proc");
        assert_eq!(boot_id_bind(proc, None), None);
        let (source, target) = boot_id_bind(proc, Some(Path::new("/run/vmlet/boot_id"))).unwrap();
        assert_eq!(source, Path::new("/run/vmlet/boot_id"));
        assert_eq!(
            target,
            Path::new("/run/vmlet/containers/c/rootfs/proc/sys/kernel/random/boot_id")
        );
    }

    #[test]
    fn missing_paths_are_skipped() {
        let p = Path::new("/no/such/path/for/vmlet");
        assert!(mask_path(p).is_ok());
        assert!(readonly_path(p).is_ok());
        assert_eq!(existing_dir(Path::new("/")).unwrap(), Some(true));
    }
}
