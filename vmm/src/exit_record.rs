//! The exit record (`--exit-record FILE`, see `vmlet_vmm_api::exit`): the file is
//! opened (and emptied) when the VMM starts, before seccomp, and its descriptor kept
//! here, so that the last act of every end (a normal exit, a panic, the seccomp
//! violation handler) is one `writev(2)` of the line, which the filters of every
//! thread allow and which is async-signal-safe.

use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// The record's descriptor; -1 when there is none.
static FD: AtomicI32 = AtomicI32::new(-1);

/// Opens `path` for the record, emptying it (a record left by an earlier VMM of the
/// same pod must not be read as this one's).
pub fn open(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    let old = FD.swap(file.into_raw_fd(), Ordering::SeqCst);
    if old >= 0 {
        // SAFETY: `old` was ours (taken from a File above) and no one else holds it.
        unsafe { libc::close(old) };
    }
    Ok(())
}

/// Writes `line` (and a newline) as the record, once: later calls write nothing, so
/// the first end that reports (a panic before the exit path) is the one kept.
/// Async-signal-safe.
pub fn write(line: &[u8]) {
    let fd = FD.swap(-1, Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let iov = [
        libc::iovec {
            iov_base: line.as_ptr() as *mut libc::c_void,
            iov_len: line.len(),
        },
        libc::iovec {
            iov_base: b"\n".as_ptr() as *mut libc::c_void,
            iov_len: 1,
        },
    ];
    // SAFETY: `fd` is the record's descriptor, which this call took over; both
    // buffers are valid for their lengths and only read. writev(2) is
    // async-signal-safe, and one call writes the whole line.
    unsafe { libc::writev(fd, iov.as_ptr(), 2) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_is_kept_and_a_reopen_empties_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm-exit");
        std::fs::write(&path, "an earlier VMM's record\n").unwrap();
        open(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        write(b"vmlet-vmm: error: first (exit status 1)");
        write(b"vmlet-vmm: error: second (exit status 1)");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "vmlet-vmm: error: first (exit status 1)\n"
        );
    }
}
