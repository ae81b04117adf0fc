//! A container process's seccomp filter: the classic BPF program vmletd compiled from
//! the container's profile, checked here and installed by the child with
//! `seccomp(SECCOMP_SET_MODE_FILTER)`.
//!
//! When to install it follows runc (`libcontainer/standard_init_linux.go`): with
//! `no_new_privileges` as late as possible, just before `execve`, so that few
//! syscalls of the setup run under it; without, installing a filter is privileged
//! (`CAP_SYS_ADMIN`), so it goes in before the capabilities are dropped.

use std::fmt;

/// Most instructions in a filter (the kernel's `BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;
/// Bytes of one `struct sock_filter`.
const INSTRUCTION: usize = 8;

/// A filter that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Its length is not a whole number of instructions.
    #[error("seccomp filter of {0} bytes: not a multiple of {INSTRUCTION}")]
    Length(usize),
    /// Too few or too many instructions.
    #[error("seccomp filter of {0} instructions (1 to {MAX_INSTRUCTIONS})")]
    Count(usize),
    /// The kernel refused it.
    #[error("install the seccomp filter: {0}")]
    Install(std::io::Error),
}

/// A checked seccomp filter.
#[derive(Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({} instructions)", self.program.len())
    }
}

impl Filter {
    /// Checks a filter: `struct sock_filter` entries, little endian. `Ok(None)` for
    /// an empty one (no filter).
    pub fn parse(bytes: &[u8]) -> Result<Option<Filter>, SeccompError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if !bytes.len().is_multiple_of(INSTRUCTION) {
            return Err(SeccompError::Length(bytes.len()));
        }
        let count = bytes.len() / INSTRUCTION;
        if count > MAX_INSTRUCTIONS {
            return Err(SeccompError::Count(count));
        }
        let program = bytes
            .chunks_exact(INSTRUCTION)
            .map(|i| libc::sock_filter {
                code: u16::from_le_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Some(Filter { program }))
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Never true: an empty filter is no filter.
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread (vmlet-init's child is
    /// single-threaded). Needs `no_new_privs` or `CAP_SYS_ADMIN`.
    pub fn install(&self) -> Result<(), SeccompError> {
        let len = u16::try_from(self.program.len())
            .map_err(|_| SeccompError::Count(self.program.len()))?;
        let prog = libc::sock_fprog {
            len,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `len` valid instructions that outlive the call; the
        // kernel copies the program and does not write through the pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                std::ptr::addr_of!(prog),
            )
        };
        if r != 0 {
            return Err(SeccompError::Install(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..2].copy_from_slice(&code.to_le_bytes());
        b[2] = jt;
        b[3] = jf;
        b[4..].copy_from_slice(&k.to_le_bytes());
        b
    }

    #[test]
    fn filters_are_checked() {
        assert!(Filter::parse(&[]).unwrap().is_none());
        assert!(matches!(
            Filter::parse(&[0; 12]),
            Err(SeccompError::Length(12))
        ));
        assert!(matches!(
            Filter::parse(&vec![0; 8 * 4097]),
            Err(SeccompError::Count(4097))
        ));
        let f = Filter::parse(&vec![0; 8 * 4096]).unwrap().unwrap();
        assert_eq!(f.len(), 4096);
        // BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
        let f = Filter::parse(&insn(0x06, 1, 2, 0x7fff_0000))
            .unwrap()
            .unwrap();
        let i = f.program[0];
        assert_eq!((i.code, i.jt, i.jf, i.k), (0x06, 1, 2, 0x7fff_0000));
        assert_eq!(format!("{f:?}"), "Filter(1 instructions)");
    }
}
