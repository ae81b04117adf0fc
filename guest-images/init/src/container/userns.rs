//! User namespaces of containers (CRI `userns_options` mode POD, `hostUsers: false`):
//! vmlet-init makes one per container with the requested mappings and keeps its
//! descriptor; the container's processes join it just before they take their ids,
//! after their mounts are made. The image (and any mounted directory whose file
//! system allows it) is seen through an idmapped mount of the same mappings, so
//! its files keep their owners inside: root's files are root's, not `nobody`'s.
//!
//! Linux 6.1 idmaps erofs, ext4 and overlayfs layers, not tmpfs or virtio-fs: files
//! of those show the overflow id (65534) inside, as they would under runc.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult};

use super::mount_attr;
use super::spec::UserNs;

/// Making a user namespace or an idmapped mount failed.
#[derive(Debug, thiserror::Error)]
#[error("user namespace: {what}: {source}")]
pub struct UsernsError {
    what: String,
    source: io::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UsernsError {
    let what = what.into();
    move |source| UsernsError { what, source }
}

fn nix_err(what: &'static str) -> impl FnOnce(nix::Error) -> UsernsError {
    move |e| UsernsError {
        what: what.into(),
        source: e.into(),
    }
}

/// A new user namespace with `ns`'s mappings, held by its descriptor: a child
/// unshares it and waits while vmlet-init writes its maps and opens it, then exits.
/// vmlet-init is single-threaded, so forking is safe (as for every container).
pub fn create(ns: &UserNs) -> Result<OwnedFd, UsernsError> {
    let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).map_err(nix_err("pipe"))?;
    let (done_r, done_w) = pipe2(OFlag::O_CLOEXEC).map_err(nix_err("pipe"))?;
    // SAFETY: vmlet-init runs on one thread; the child makes system calls only and
    // ends in _exit.
    match unsafe { fork() }.map_err(nix_err("fork"))? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            let code = match unshare(CloneFlags::CLONE_NEWUSER) {
                Ok(()) => {
                    let _ = nix::unistd::write(&ready_w, b"u");
                    // Until vmlet-init has opened the namespace and closed its end.
                    let mut byte = [0u8; 1];
                    let _ = nix::unistd::read(&done_r, &mut byte);
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: ends the child without running vmlet-init's exit code.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let opened = (|| {
                let mut byte = [0u8; 1];
                match nix::unistd::read(&ready_r, &mut byte) {
                    Ok(1) => {}
                    Ok(_) => return Err(err("unshare")(io::Error::other("the child failed"))),
                    Err(e) => return Err(nix_err("wait for the child")(e)),
                }
                // gid_map first: either order works for a writer with CAP_SETGID in
                // the parent namespace, which also leaves setgroups(2) allowed.
                std::fs::write(format!("/proc/{child}/gid_map"), ns.gid_map())
                    .map_err(err("write gid_map"))?;
                std::fs::write(format!("/proc/{child}/uid_map"), ns.uid_map())
                    .map_err(err("write uid_map"))?;
                std::fs::File::open(format!("/proc/{child}/ns/user"))
                    .map(OwnedFd::from)
                    .map_err(err("open the namespace"))
            })();
            drop(done_w);
            // Reaped here: vmlet-init's reaper cannot run while this thread waits.
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => opened,
                Ok(status) => {
                    opened.and(Err(err("child")(io::Error::other(format!("{status:?}")))))
                }
                Err(e) => opened.and(Err(nix_err("wait for the child")(e))),
            }
        }
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

/// Mounts a copy of the mount tree at `source` (with its submounts if `recursive`) on
/// the existing `target`, idmapped through `userns`. `Ok(false)` when the file system
/// cannot be idmapped (nothing is mounted then: the caller binds it plainly).
pub fn idmapped_bind(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> io::Result<bool> {
    let src = cstring(source)?;
    let dst = cstring(target)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `src` is NUL-terminated; open_tree returns a new descriptor or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut setattr_flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        setattr_flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let idmapped = mount_attr::set(
        tree.as_raw_fd(),
        c"",
        setattr_flags,
        mount_attr::IDMAP,
        Some(userns),
    );
    if let Err(e) = idmapped {
        // The file system (tmpfs, virtio-fs on 6.1) does not support idmapped mounts.
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(false);
        }
        return Err(e);
    }
    // SAFETY: an empty NUL-terminated path on the tree's descriptor and `dst`
    // NUL-terminated; the kernel only reads them during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::IdMap;
    use std::os::fd::AsFd;

    fn ns() -> UserNs {
        let map = |inside, outside, length| IdMap {
            inside,
            outside,
            length,
        };
        UserNs {
            uids: vec![map(0, 100_000, 65536)],
            gids: vec![map(0, 200_000, 1000), map(1000, 300_000, 10)],
        }
    }

    /// As root (the test suite runs as root): the namespace has the mappings, and
    /// a directory bound through it shows its owner mapped.
    #[test]
    fn a_namespace_with_the_mappings_and_an_idmapped_bind() {
        // SAFETY: geteuid takes no argument.
        if unsafe { libc::geteuid() } != 0 {
            assert!(create(&ns()).is_err());
            return;
        }
        let fd = create(&ns()).unwrap();
        // The kernel's own view of it, from a child that joins it.
        let (r, w) = pipe2(OFlag::empty()).unwrap();
        // SAFETY: the child makes system calls only (paths on the stack, no
        // allocation, so no lock of the harness's other threads), then _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let ok = nix::sched::setns(&fd, CloneFlags::CLONE_NEWUSER).is_ok();
                let mut buf = [0u8; 256];
                let n = if ok {
                    let f = nix::fcntl::open(
                        "/proc/self/gid_map",
                        OFlag::O_RDONLY,
                        nix::sys::stat::Mode::empty(),
                    );
                    f.ok()
                        .and_then(|f| nix::unistd::read(&f, &mut buf).ok())
                        .unwrap_or(0)
                } else {
                    0
                };
                let _ = nix::unistd::write(&w, &buf[..n]);
                // SAFETY: ends the child.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut out = String::new();
                io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
                waitpid(child, None).unwrap();
                let lines: Vec<Vec<&str>> = out
                    .lines()
                    .map(|l| l.split_whitespace().collect())
                    .collect();
                assert_eq!(
                    lines,
                    [["0", "200000", "1000"], ["1000", "300000", "10"]],
                    "{out}"
                );
            }
        }
        // tmpfs on 6.1 and earlier cannot be idmapped: Ok(false), nothing mounted;
        // where it can, the bound directory's owner is root's mapped uid.
        let dir = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        match idmapped_bind(dir.path(), target.path(), fd.as_fd(), false) {
            Ok(true) => {
                use std::os::unix::fs::MetadataExt;
                let owner = std::fs::metadata(target.path()).unwrap().uid();
                let _ = nix::mount::umount2(target.path(), nix::mount::MntFlags::MNT_DETACH);
                let root = std::fs::metadata(dir.path()).unwrap().uid();
                assert_eq!(owner, ns().host_uid(root).unwrap_or(65534));
            }
            Ok(false) => {}
            Err(e) => panic!("idmapped bind: {e}"),
        }
    }
}
