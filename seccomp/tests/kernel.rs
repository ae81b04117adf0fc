//! Compiled programs installed in the running kernel, as vmlet-init installs them
//! (`PR_SET_NO_NEW_PRIVS`, then `seccomp(SECCOMP_SET_MODE_FILTER)` with the bytes
//! as `struct sock_filter`s), checked by the syscalls they allow and refuse.
//!
//! A filter cannot be removed, so each test runs its checks in a new process of
//! this test binary (`child!`): the parent re-runs the binary for that one test
//! with `VMLET_SECCOMP_TEST_CHILD` set and checks how the process ended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use vmlet_seccomp::{compile, Profile};

const CHILD_ENV: &str = "VMLET_SECCOMP_TEST_CHILD";

/// A test whose body runs in a child process; `$check` judges the child's end.
macro_rules! child {
    ($name:ident, $check:expr, $body:block) => {
        #[test]
        fn $name() {
            let name = stringify!($name);
            if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
                $body
            } else {
                let check: fn(&Output) = $check;
                check(&run_child(name));
            }
        }
    };
}

fn run_child(name: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, name)
        .output()
        .unwrap()
}

fn passed(out: &Output) {
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.contains("1 passed"),
        "child {}:\n{log}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn killed_by_sigsys(out: &Output) {
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "child {}",
        out.status
    );
}

/// Installs a program on the calling thread, as the guest does.
fn install(program: &[u8]) {
    let filters: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_le_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect();
    assert_eq!(filters.len() * 8, program.len());
    let prog = libc::sock_fprog {
        len: u16::try_from(filters.len()).unwrap(),
        filter: filters.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl and seccomp calls; `prog` points into `filters`, alive
    // for the call, and the kernel copies the program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        // Killed children dump no core.
        assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0), 0);
        let rc = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

fn install_profile(json: &str, caps: &[&str]) {
    install(&compile(&Profile::from_json(json.as_bytes()).unwrap(), caps).unwrap());
}

fn install_runtime_default(caps: &[&str]) {
    install(&compile(&Profile::runtime_default().unwrap(), caps).unwrap());
}

/// A raw syscall's result: `Ok(value)` or `Err(errno)`.
fn sys(nr: libc::c_long, args: [libc::c_long; 3]) -> Result<libc::c_long, i32> {
    // SAFETY: the tests pass plain integers, or pointers to live buffers, for
    // syscalls that only read them.
    let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
    if rc == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(rc)
    }
}

/// An i386 syscall (`int 0x80`) with one argument: the kernel's result, a
/// negative errno on failure.
fn i386_syscall(nr: u32, arg: u32) -> i32 {
    let ret: u32;
    // SAFETY: `int 0x80` enters the kernel's i386 entry with the number in eax and
    // the argument in ebx (saved and restored around it: LLVM reserves rbx);
    // r8-r11 may be cleared on return and are declared clobbered.
    unsafe {
        std::arch::asm!(
            "mov {saved}, rbx",
            "mov ebx, {arg:e}",
            "int 0x80",
            "mov rbx, {saved}",
            saved = out(reg) _,
            arg = in(reg) arg,
            inlateout("eax") nr => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    ret as i32
}

const I386_GETPID: u32 = 20;
const I386_UNSHARE: u32 = 310;

fn mkdir_and_rmdir() -> Result<(), i32> {
    let dir = std::env::temp_dir().join(format!("vmlet-seccomp-{}", std::process::id()));
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    sys(libc::SYS_mkdir, [path.as_ptr() as libc::c_long, 0o700, 0])?;
    sys(libc::SYS_rmdir, [path.as_ptr() as libc::c_long, 0, 0]).map(drop)
}

fn add_key() -> Result<libc::c_long, i32> {
    let (kind, desc, payload) = (c"user", c"vmlet-seccomp-test", b"x");
    // SAFETY: NUL-terminated strings and a one-byte payload, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            1usize,
            libc::KEY_SPEC_PROCESS_KEYRING,
        )
    };
    if rc == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(rc)
    }
}

fn keyctl_keyring_id() -> Result<libc::c_long, i32> {
    sys(
        libc::SYS_keyctl,
        [
            libc::KEYCTL_GET_KEYRING_ID as libc::c_long,
            libc::KEY_SPEC_PROCESS_KEYRING as libc::c_long,
            1,
        ],
    )
}

fn unshare(flags: libc::c_int) -> Result<libc::c_long, i32> {
    sys(libc::SYS_unshare, [flags as libc::c_long, 0, 0])
}

/// clone3 with a null argument: EFAULT/EINVAL from the kernel, or the filter's errno.
fn clone3_errno() -> i32 {
    sys(libc::SYS_clone3, [0, 0, 0]).unwrap_err()
}

/// clone with these flags and no new stack (fork-like); a child exits at once.
fn raw_clone(flags: libc::c_int) -> Result<libc::c_long, i32> {
    let rc = sys(
        libc::SYS_clone,
        [(flags | libc::SIGCHLD) as libc::c_long, 0, 0],
    );
    match rc {
        // SAFETY: the new process leaves at once, touching nothing.
        Ok(0) => unsafe { libc::_exit(0) },
        Ok(pid) => {
            // SAFETY: reaps the child just created.
            unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
            Ok(pid)
        }
        Err(e) => Err(e),
    }
}

fn socket(family: libc::c_int) -> Result<libc::c_long, i32> {
    let fd = sys(
        libc::SYS_socket,
        [family as libc::c_long, libc::SOCK_STREAM as libc::c_long, 0],
    )?;
    // SAFETY: closes the socket just opened.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(fd)
}

fn personality(persona: libc::c_ulong) -> Result<libc::c_long, i32> {
    sys(libc::SYS_personality, [persona as libc::c_long, 0, 0])
}

const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;

child!(
    runtime_default_refuses_namespaces_keyrings_and_vsock,
    passed,
    {
        install_runtime_default(&[]);
        assert_eq!(unshare(libc::CLONE_NEWUSER), Err(libc::EPERM));
        assert_eq!(unshare(libc::CLONE_NEWUTS), Err(libc::EPERM));
        assert_eq!(add_key(), Err(libc::EPERM));
        assert_eq!(keyctl_keyring_id(), Err(libc::EPERM));
        assert_eq!(socket(libc::AF_VSOCK), Err(libc::EPERM));
        assert_eq!(personality(ADDR_NO_RANDOMIZE), Err(libc::EPERM));
        assert_eq!(
            i386_syscall(I386_UNSHARE, libc::CLONE_NEWUTS as u32),
            -libc::EPERM
        );
    }
);

child!(runtime_default_allows_what_programs_need, passed, {
    install_runtime_default(&[]);
    assert_eq!(sys(libc::SYS_getpid, [0; 3]), Ok(std::process::id().into()));
    let text = b"write allowed\n";
    assert_eq!(
        sys(
            libc::SYS_write,
            [1, text.as_ptr() as libc::c_long, text.len() as libc::c_long]
        ),
        Ok(text.len() as libc::c_long)
    );
    mkdir_and_rmdir().unwrap();
    socket(libc::AF_UNIX).unwrap();
    personality(0).unwrap();
    personality(0xffff_ffff).unwrap();
    // i386 programs run too (archMap: x86_64 with i386 and x32).
    assert_eq!(i386_syscall(I386_GETPID, 0), std::process::id() as i32);
});

child!(
    runtime_default_clone_is_masked_and_clone3_says_enosys,
    passed,
    {
        install_runtime_default(&[]);
        // MASKED_EQ on clone's flags: no new namespaces.
        raw_clone(0).unwrap();
        assert_eq!(raw_clone(libc::CLONE_NEWUTS), Err(libc::EPERM));
        // clone3 cannot be filtered by its flags: ENOSYS, and C libraries fall back
        // to clone, so spawning still works.
        assert_eq!(clone3_errno(), libc::ENOSYS);
        assert!(Command::new("true").status().unwrap().success());
    }
);

child!(
    runtime_default_with_cap_sys_admin_allows_namespaces,
    passed,
    {
        install_runtime_default(&["CAP_SYS_ADMIN"]);
        unshare(libc::CLONE_NEWUTS).unwrap();
        raw_clone(libc::CLONE_NEWUTS).unwrap();
        assert_ne!(clone3_errno(), libc::ENOSYS);
        // Keyrings stay refused whatever the capabilities.
        assert_eq!(add_key(), Err(libc::EPERM));
    }
);

child!(unconfined_is_unaffected, passed, {
    // No program: the calls the filters refuse work here, so the refusals above
    // are the filters'.
    unshare(libc::CLONE_NEWUTS).unwrap();
    add_key().unwrap();
    keyctl_keyring_id().unwrap();
    socket(libc::AF_UNIX).unwrap();
    personality(ADDR_NO_RANDOMIZE).unwrap();
    personality(0).unwrap();
    raw_clone(libc::CLONE_NEWUTS).unwrap();
    assert_ne!(clone3_errno(), libc::ENOSYS);
    mkdir_and_rmdir().unwrap();
});

child!(localhost_profile_denies_mkdir_with_enosys, passed, {
    install_profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"syscalls":[
            {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        &[],
    );
    assert_eq!(mkdir_and_rmdir(), Err(libc::ENOSYS));
    sys(libc::SYS_getpid, [0; 3]).unwrap();
});

child!(
    every_argument_operator_compares_as_the_kernel_sees_it,
    passed,
    {
        install_profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["umask"],"action":"SCMP_ACT_ERRNO","errnoRet":61,
             "args":[{"index":0,"value":511,"op":"SCMP_CMP_EQ"},{"index":0,"value":448,"op":"SCMP_CMP_EQ"}]},
            {"names":["sched_get_priority_max"],"action":"SCMP_ACT_ERRNO","errnoRet":62,
             "args":[{"index":0,"value":1,"op":"SCMP_CMP_NE"}]},
            {"names":["sched_get_priority_min"],"action":"SCMP_ACT_ERRNO","errnoRet":63,
             "args":[{"index":0,"value":1,"op":"SCMP_CMP_LT"}]},
            {"names":["getpgid"],"action":"SCMP_ACT_ERRNO","errnoRet":64,
             "args":[{"index":0,"value":1,"op":"SCMP_CMP_LE"}]},
            {"names":["getsid"],"action":"SCMP_ACT_ERRNO","errnoRet":65,
             "args":[{"index":0,"value":2147418112,"op":"SCMP_CMP_GE"}]},
            {"names":["getpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":66,
             "args":[{"index":1,"value":1000000,"op":"SCMP_CMP_GT"}]},
            {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":67,
             "args":[{"index":0,"value":262144,"valueTwo":262144,"op":"SCMP_CMP_MASKED_EQ"}]}
        ]}"#,
            &[],
        );
        let pid = std::process::id() as libc::c_long;
        // EQ, twice on one argument: either matches (runc's rule).
        assert_eq!(sys(libc::SYS_umask, [0o777, 0, 0]), Err(61));
        assert_eq!(sys(libc::SYS_umask, [0o700, 0, 0]), Err(61));
        sys(libc::SYS_umask, [0o022, 0, 0]).unwrap();
        // NE
        assert_eq!(sys(libc::SYS_sched_get_priority_max, [0, 0, 0]), Err(62));
        assert_eq!(sys(libc::SYS_sched_get_priority_max, [1, 0, 0]), Ok(99));
        // LT
        assert_eq!(sys(libc::SYS_sched_get_priority_min, [0, 0, 0]), Err(63));
        assert_eq!(sys(libc::SYS_sched_get_priority_min, [1, 0, 0]), Ok(1));
        // LE
        assert_eq!(sys(libc::SYS_getpgid, [1, 0, 0]), Err(64));
        sys(libc::SYS_getpgid, [pid, 0, 0]).unwrap();
        // GE
        assert_eq!(sys(libc::SYS_getsid, [0x7fff_0000, 0, 0]), Err(65));
        sys(libc::SYS_getsid, [0, 0, 0]).unwrap();
        // GT, on the second argument
        let prio_process = libc::PRIO_PROCESS as libc::c_long;
        assert_eq!(
            sys(libc::SYS_getpriority, [prio_process, 1_000_001, 0]),
            Err(66)
        );
        sys(libc::SYS_getpriority, [prio_process, 0, 0]).unwrap();
        // MASKED_EQ: (persona & ADDR_NO_RANDOMIZE) == ADDR_NO_RANDOMIZE
        assert_eq!(personality(ADDR_NO_RANDOMIZE | 0x0008), Err(67));
        personality(0x0008).unwrap();
        personality(0).unwrap();
    }
);

child!(
    trace_without_a_tracer_fails_with_enosys_and_log_allows,
    passed,
    {
        install_profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getppid"],"action":"SCMP_ACT_TRACE","errnoRet":1},
            {"names":["getpid"],"action":"SCMP_ACT_LOG"}]}"#,
            &[],
        );
        assert_eq!(sys(libc::SYS_getppid, [0; 3]), Err(libc::ENOSYS));
        assert_eq!(sys(libc::SYS_getpid, [0; 3]), Ok(std::process::id().into()));
    }
);

child!(
    kill_process_ends_the_process_with_sigsys,
    killed_by_sigsys,
    {
        install_profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getpgrp"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
            &[],
        );
        let _ = sys(libc::SYS_getpgrp, [0; 3]);
        unreachable!("getpgrp returned");
    }
);

child!(trap_sends_sigsys, killed_by_sigsys, {
    install_profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getpgrp"],"action":"SCMP_ACT_TRAP"}]}"#,
        &[],
    );
    let _ = sys(libc::SYS_getpgrp, [0; 3]);
    unreachable!("getpgrp returned");
});

child!(kill_thread_ends_only_the_calling_thread, passed, {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        install_profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["getpgrp"],"action":"SCMP_ACT_KILL"}]}"#,
            &[],
        );
        // SAFETY: gettid has no arguments.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = sys(libc::SYS_getpgrp, [0; 3]);
        tx.send(-1).unwrap();
    });
    let tid = rx.recv().unwrap();
    let task = format!("/proc/self/task/{tid}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&task).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "thread {tid} still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(rx.try_recv().is_err(), "the killed thread went on");
    // This thread, unfiltered, goes on; the dead thread is never joined.
    std::mem::forget(thread);
    sys(libc::SYS_getpgrp, [0; 3]).unwrap();
});
