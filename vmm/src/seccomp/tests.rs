//! Each rule proven both ways: a child process installs the real filter, then the
//! allowed form must work and the forbidden form must end it with
//! [`VIOLATION_EXIT`] (or the chosen errno).

use super::rules::{KVM_GET_REGS, KVM_RUN};
use super::*;
use crate::devices::virtio::block::IoEngine;
use std::os::fd::AsRawFd;

/// Runs `f` in a forked child; returns its exit status and what it wrote to
/// stderr.
fn in_child_with_stderr(f: impl FnOnce() -> i32) -> (libc::c_int, String) {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child builds its filter (glibc's malloc is usable after fork),
    // installs it, makes a few calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain descriptor calls on the pipe this process owns.
        unsafe {
            libc::dup2(pipe[1], 2);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        let code = f();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: closing our copy of the write end, which we own.
    unsafe { libc::close(pipe[1]) };
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        // SAFETY: reading into `chunk`, which is valid for its length.
        let n = unsafe { libc::read(pipe[0], chunk.as_mut_ptr().cast(), chunk.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n as usize]);
    }
    // SAFETY: closing the read end, which we own.
    unsafe { libc::close(pipe[0]) };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    (
        libc::WEXITSTATUS(status),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

/// Runs `f` in a child under the filter of `kind` (built there, for its pid);
/// its exit status, and its stderr.
fn under(kind: ThreadKind, f: impl FnOnce() -> i32) -> (libc::c_int, String) {
    install_violation_handler().unwrap();
    in_child_with_stderr(|| {
        let Ok(prog) = filter(kind, std::process::id()) else {
            return 100;
        };
        if apply(kind, &prog).is_err() {
            return 101;
        }
        f()
    })
}

/// `allowed` works under the filter of `kind`, and `forbidden` ends the process.
fn check(kind: ThreadKind, what: &str, allowed: impl FnOnce() -> bool, forbidden: impl FnOnce()) {
    let (code, stderr) = under(kind, || if allowed() { 0 } else { 2 });
    assert_eq!(
        code, 0,
        "{kind:?}: the allowed form of {what} failed: {stderr}"
    );
    let (code, stderr) = under(kind, || {
        forbidden();
        0
    });
    assert_eq!(
        code, VIOLATION_EXIT,
        "{kind:?}: the forbidden form of {what} passed: {stderr}"
    );
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn forbidden_syscall_ends_the_process_with_its_name_as_last_line() {
    for (kind, thread) in [
        (ThreadKind::Vmm, "the VMM thread"),
        (ThreadKind::Vcpu, "a vCPU thread"),
    ] {
        let (code, stderr) = under(kind, || {
            // Allowed: a plain write to stderr of nothing.
            // SAFETY: zero-length write.
            unsafe { libc::write(2, std::ptr::null(), 0) };
            // Forbidden for both kinds: executing a program.
            // SAFETY: raw syscall with null arguments; the filter stops it first.
            unsafe { libc::syscall(libc::SYS_execve, 0, 0, 0) };
            0
        });
        assert_eq!(code, VIOLATION_EXIT, "{kind:?}");
        assert_eq!(
            stderr.lines().last(),
            Some(
                format!(
                    "vmlet-vmm: error: seccomp: forbidden syscall 59 (execve) on {thread} (exit status 159)"
                )
                .as_str()
            ),
            "{stderr:?}"
        );
    }
}

#[test]
fn no_execveat_either() {
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        let (code, _) = under(kind, || {
            // SAFETY: raw syscall with null arguments; the filter stops it first.
            unsafe { libc::syscall(libc::SYS_execveat, -1, 0, 0, 0, 0) };
            0
        });
        assert_eq!(code, VIOLATION_EXIT, "{kind:?}");
    }
}

#[test]
fn violation_line_without_allocation() {
    let line = violation_line(-1, 0);
    assert_eq!(
        std::str::from_utf8(line.as_bytes()).unwrap(),
        "vmlet-vmm: error: seccomp: forbidden syscall -1 (?) on an unfiltered thread (exit status 159)\n"
    );
    let line = violation_line(libc::SYS_openat, b'c');
    assert!(std::str::from_utf8(line.as_bytes())
        .unwrap()
        .contains("syscall 257 (openat) on a vCPU thread"));
}

#[test]
fn vcpu_ioctls_are_kvm_run_and_register_reads_only() {
    check(
        ThreadKind::Vcpu,
        "ioctl",
        || {
            // On a bad fd these pass the filter and fail with EBADF.
            // SAFETY: ioctl on an invalid fd has no effect.
            unsafe {
                libc::ioctl(-1, KVM_RUN as libc::c_ulong) == -1
                    && errno() == libc::EBADF
                    && libc::ioctl(-1, KVM_GET_REGS as libc::c_ulong) == -1
                    && errno() == libc::EBADF
            }
        },
        // KVM_CREATE_VCPU is not for a running vCPU.
        // SAFETY: as above.
        || unsafe {
            libc::ioctl(-1, 0xae41 as libc::c_ulong);
        },
    );
}

#[test]
fn vmm_ioctls_are_socket_setup_only() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    check(
        ThreadKind::Vmm,
        "ioctl",
        || a.set_nonblocking(true).is_ok(),
        // Faking terminal input, or running a vCPU from the VMM thread.
        // SAFETY: ioctl on an invalid fd has no effect.
        || unsafe {
            libc::ioctl(-1, libc::TIOCSTI);
        },
    );
    let (code, _) = under(ThreadKind::Vmm, || {
        // SAFETY: as above.
        unsafe { libc::ioctl(-1, KVM_RUN as libc::c_ulong) };
        0
    });
    assert_eq!(code, VIOLATION_EXIT);
}

#[test]
fn sockets_are_unix_streams_only() {
    let forbidden = [
        (libc::AF_INET, libc::SOCK_STREAM),
        (libc::AF_INET6, libc::SOCK_DGRAM),
        (libc::AF_NETLINK, libc::SOCK_RAW),
        (libc::AF_PACKET, libc::SOCK_RAW),
        (libc::AF_UNIX, libc::SOCK_DGRAM),
        (libc::AF_UNIX, libc::SOCK_SEQPACKET),
    ];
    for (domain, ty) in forbidden {
        check(
            ThreadKind::Vmm,
            "socket",
            || {
                // SAFETY: creating a socket; the result is checked.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                fd >= 0
            },
            // SAFETY: as above.
            || unsafe {
                libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0);
            },
        );
    }
    // vCPU threads open no sockets at all.
    let (code, _) = under(ThreadKind::Vcpu, || {
        // SAFETY: as above.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        0
    });
    assert_eq!(code, VIOLATION_EXIT);
}

#[test]
fn clone_makes_threads_only() {
    check(
        ThreadKind::Vmm,
        "clone",
        // glibc tries clone3 (ENOSYS), then clone with the thread flags.
        || std::thread::spawn(|| 5).join().is_ok_and(|v| v == 5),
        // A new process.
        // SAFETY: if the filter let it through, both processes would return
        // normally; it does not.
        || unsafe {
            libc::fork();
        },
    );
    // A thread in new namespaces, or sharing nothing.
    for flags in [
        rules::THREAD_CLONE_FLAGS | libc::CLONE_NEWNET as u64,
        libc::SIGCHLD as u64,
    ] {
        let (code, _) = under(ThreadKind::Vmm, || {
            // SAFETY: a null stack makes the kernel refuse a thread clone; the
            // filter stops it first anyway.
            unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
            0
        });
        assert_eq!(code, VIOLATION_EXIT, "clone flags {flags:#x}");
    }
}

#[test]
fn clone3_answers_enosys_on_the_vmm_thread_and_traps_on_vcpus() {
    let (code, stderr) = under(ThreadKind::Vmm, || {
        // SAFETY: clone3 with a null argument block: the kernel would say EFAULT
        // or EINVAL; the filter answers first.
        let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
        if r == -1 && errno() == libc::ENOSYS {
            0
        } else {
            2
        }
    });
    assert_eq!(code, 0, "{stderr}");
    let (code, _) = under(ThreadKind::Vcpu, || {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
        0
    });
    assert_eq!(code, VIOLATION_EXIT);
}

#[test]
fn openat_opens_existing_files_to_read_or_write_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk");
    std::fs::write(&file, b"x").unwrap();
    let dir_c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
    let new_c = std::ffi::CString::new(
        dir.path()
            .join("new")
            .as_os_str()
            .as_encoded_bytes()
            .to_vec(),
    )
    .unwrap();
    let forbidden: [(&std::ffi::CStr, libc::c_int); 5] = [
        (&new_c, libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC),
        (
            &new_c,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        ),
        (&dir_c, libc::O_PATH | libc::O_CLOEXEC),
        (&dir_c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC),
        (&dir_c, libc::O_RDONLY),
    ];
    for (path, flags) in forbidden {
        check(
            ThreadKind::Vmm,
            "openat",
            || {
                std::fs::File::open(&file).is_ok()
                    && std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&file)
                        .is_ok()
            },
            // SAFETY: a NUL-terminated path; the result is not used.
            || unsafe {
                libc::openat(libc::AT_FDCWD, path.as_ptr(), flags, 0o600);
            },
        );
    }
    assert!(!dir.path().join("new").exists());
    // vCPU threads open nothing.
    let (code, _) = under(ThreadKind::Vcpu, || {
        let _ = std::fs::File::open(&file);
        0
    });
    assert_eq!(code, VIOLATION_EXIT);
}

/// One anonymous read-write page, or null.
fn page() -> *mut libc::c_void {
    // SAFETY: a fresh anonymous mapping; the result is checked by the caller.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p
    }
}

#[test]
fn memory_is_never_executable() {
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        check(
            kind,
            "mmap",
            || !page().is_null(),
            // SAFETY: a fresh anonymous mapping.
            || unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            },
        );
        check(
            kind,
            "mprotect",
            // SAFETY: changing the protection of our own fresh page.
            || unsafe { libc::mprotect(page(), 4096, libc::PROT_READ) == 0 },
            // SAFETY: as above.
            || unsafe {
                libc::mprotect(page(), 4096, libc::PROT_READ | libc::PROT_EXEC);
            },
        );
    }
}

#[test]
fn madvise_only_drops_pages() {
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        check(
            kind,
            "madvise",
            // SAFETY: dropping the contents of our own fresh page.
            || unsafe {
                let p = page();
                libc::madvise(p, 4096, libc::MADV_DONTNEED) == 0
                    && libc::madvise(p, 4096, libc::MADV_FREE) == 0
            },
            // SAFETY: as above; the advice is harmless should it pass.
            || unsafe {
                libc::madvise(page(), 4096, libc::MADV_DONTFORK);
            },
        );
    }
}

#[test]
fn fcntl_only_reads_and_sets_flags() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        for cmd in [
            libc::F_SETOWN,
            libc::F_SETLEASE,
            libc::F_DUPFD,
            libc::F_SETLK,
        ] {
            check(
                kind,
                "fcntl",
                || {
                    // SAFETY: flag calls on a socket we own.
                    unsafe {
                        let fl = libc::fcntl(fd, libc::F_GETFL);
                        fl >= 0
                            && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
                            && libc::fcntl(fd, libc::F_GETFD) >= 0
                    }
                },
                // SAFETY: on an invalid fd; harmless should it pass.
                || unsafe {
                    libc::fcntl(-1, cmd, 0);
                },
            );
        }
    }
}

#[test]
fn signals_only_to_own_threads_and_only_the_kick_or_abort() {
    let kick = vmm_sys_util::signal::SIGRTMIN();
    let ignore = |sig: libc::c_int| {
        // SAFETY: ignoring a signal in this (child) process.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    };
    let own = |sig: libc::c_int| {
        // SAFETY: signalling this thread; the signal is ignored.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), sig) }
    };
    check(
        ThreadKind::Vmm,
        "tgkill",
        || {
            ignore(kick);
            own(kick) == 0
        },
        || {
            ignore(libc::SIGUSR1);
            own(libc::SIGUSR1);
        },
    );
    check(
        ThreadKind::Vmm,
        "tgkill",
        || {
            ignore(kick);
            own(kick) == 0
        },
        // Another process (init), with the null signal: harmless should it pass.
        // SAFETY: as above.
        || unsafe {
            libc::syscall(libc::SYS_tgkill, 1, 1, 0);
        },
    );
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        let (code, _) = under(kind, || {
            // SAFETY: the null signal to this process: harmless should it pass.
            unsafe { libc::kill(libc::getpid(), 0) };
            0
        });
        assert_eq!(code, VIOLATION_EXIT, "{kind:?}");
    }
}

#[test]
fn prctl_only_names_threads() {
    check(
        ThreadKind::Vmm,
        "prctl",
        // SAFETY: naming this thread with a NUL-terminated name.
        || unsafe { libc::prctl(libc::PR_SET_NAME, c"t".as_ptr()) == 0 },
        // SAFETY: a read-only query, harmless should it pass.
        || unsafe {
            libc::prctl(libc::PR_GET_DUMPABLE);
        },
    );
}

#[test]
fn fallocate_only_punches_holes() {
    check(
        ThreadKind::Vmm,
        "fallocate",
        || {
            let mode = crate::devices::virtio::balloon::PUNCH_HOLE;
            // SAFETY: fallocate on a bad fd has no effect.
            unsafe { libc::fallocate(-1, mode, 0, 4096) == -1 && errno() == libc::EBADF }
        },
        // Growing a file.
        // SAFETY: as above.
        || unsafe {
            libc::fallocate(-1, 0, 0, 4096);
        },
    );
}

#[test]
fn unlink_but_not_unlinkat() {
    check(
        ThreadKind::Vmm,
        "unlink",
        || std::fs::remove_file("/nonexistent/vmlet-test").is_err() && errno() == libc::ENOENT,
        // SAFETY: a NUL-terminated path that does not exist.
        || unsafe {
            libc::unlinkat(libc::AT_FDCWD, c"/nonexistent/vmlet-test".as_ptr(), 0);
        },
    );
}

#[test]
fn a_drive_starts_its_workers_and_serves_requests_under_the_vmm_filter() {
    drive_serves_requests_under_the_vmm_filter(IoEngine::Workers);
}

#[test]
fn a_drive_on_io_uring_serves_requests_and_swaps_its_file_under_the_vmm_filter() {
    drive_serves_requests_under_the_vmm_filter(IoEngine::Uring);
}

#[test]
fn io_uring_rings_are_made_before_the_filter_only() {
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        check(
            kind,
            "io_uring_setup",
            // SAFETY: waiting on a descriptor that is no ring touches no memory.
            || unsafe {
                libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0, 0) == -1
                    && errno() == libc::EBADF
            },
            || {
                let mut p = [0u8; 120];
                // SAFETY: a zeroed parameter block of the right size.
                unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, p.as_mut_ptr()) };
            },
        );
    }
}

fn drive_serves_requests_under_the_vmm_filter(engine: IoEngine) {
    use crate::devices::virtio::block::{Block, Disk};
    use crate::devices::virtio::{IrqTrigger, VirtioDevice};
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    // Everything is made before the filter, as the VMM makes its devices.
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(64 * 1024).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let q = MockSplitQueue::new(&mem, 16);
    // A 4 KiB write at sector 0 (header, data, status), then a flush (header, status).
    let mut hdr = [0u8; 16];
    hdr[0] = 1;
    mem.write_slice(&hdr, GuestAddress(0x10_0000)).unwrap();
    hdr[0] = 4;
    mem.write_slice(&hdr, GuestAddress(0x10_0100)).unwrap();
    let d = |addr: u64, len: u32, flags: u32, next: u16| {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    };
    let (next, write) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    q.add_desc_chains(
        &[
            d(0x10_0000, 16, next, 1),
            d(0x20_0000, 4096, next, 2),
            d(0x30_0000, 1, write, 0),
            d(0x10_0100, 16, next, 4),
            d(0x30_0010, 1, write, 0),
        ],
        0,
    )
    .unwrap();
    let other = tempfile::NamedTempFile::new().unwrap();
    other.as_file().set_len(64 * 1024).unwrap();
    let other_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(other.path())
        .unwrap();
    let disk = Disk::open(file.path(), false).unwrap();
    let blk = Block::with_engine("d".into(), disk, engine).unwrap();
    assert_eq!(blk.engine(), engine);
    let blk = Arc::new(Mutex::new(blk));
    blk.lock()
        .unwrap()
        .activate(
            mem.clone(),
            vec![q.create_queue::<Queue>().unwrap()],
            Arc::new(IrqTrigger::new().unwrap()),
        )
        .unwrap();
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(blk.clone());
    let used = q.used_addr().unchecked_add(2);
    let (code, stderr) = under(ThreadKind::Vmm, || {
        if blk.lock().unwrap().queue_events()[0].write(1).is_err() {
            return 2;
        }
        for _ in 0..100 {
            if em.run_with_timeout(100).is_err() {
                return 3;
            }
            if mem.read_obj::<u16>(used).is_ok_and(|n| n == 2) {
                // A swap (by a file the client sent) keeps the engine.
                let mut blk = blk.lock().unwrap();
                if blk.swap_file(other_file, other.path()).is_err() || blk.engine() != engine {
                    return 5;
                }
                return 0;
            }
        }
        4
    });
    assert_eq!(code, 0, "{stderr}");
}
