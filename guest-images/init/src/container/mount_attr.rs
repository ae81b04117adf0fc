//! mount_setattr(2), which neither libc nor nix wraps: sets attributes (read-only, an
//! idmapping) on a mount, or on a whole mount tree.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// `MOUNT_ATTR_RDONLY`.
pub const RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_IDMAP`: the mount shows its files' owners through a user namespace.
pub const IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr`, which libc does not define.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets `attr_set` on the mount at `path` (relative to `dirfd`; `flags` as
/// mount_setattr takes them: `AT_EMPTY_PATH`, `AT_RECURSIVE`, ...), with `userns` the
/// namespace of an [`IDMAP`].
pub fn set(
    dirfd: RawFd,
    path: &CStr,
    flags: libc::c_uint,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    // SAFETY: `path` is NUL-terminated and `attr` a valid mount_attr whose size is
    // passed; the kernel only reads both during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
