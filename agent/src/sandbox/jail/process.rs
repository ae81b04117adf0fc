//! Starting a VMM in its jail and waiting for it. vmletd clones the child into new
//! mount, PID and IPC namespaces; the child joins the pod's cgroup and network
//! namespace, runs the plan's steps ([`super::plan`]), sets its rlimits, session and
//! descriptors, drops every capability and its root identity, sets `no_new_privs`
//! and execs the VMM. It runs between clone and exec in a copy of a multi-threaded
//! process, so it makes system calls only: everything it uses is made before the
//! clone. A failing step is reported through a close-on-exec pipe (the step's number
//! and errno), so that the caller gets a typed error naming the step, not a VMM that
//! just exited.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::super::error::SandboxError;
use super::super::vmm::VmmCommand;
use super::plan::{self, Step};
use super::JailSpec;

/// Stack of the cloned child until it execs.
const STACK_BYTES: usize = 256 << 10;

/// The only variables of vmletd's environment the VMM gets.
const PASSED_ENV: &[&str] = &["VMLET_LOG", "RUST_BACKTRACE"];

/// What the child does after the plan's steps, in order (for error messages).
const LAST_STEPS: &[&str] = &[
    "set rlimits",
    "start a session",
    "set up stdin, stdout and stderr",
    "close inherited descriptors",
    "drop the capability bounding set",
    "switch to the jail's uid and gid",
    "clear the remaining capabilities",
    "set no_new_privs",
    "reset signal mask and dispositions",
    "exec the VMM",
];

/// What the child does before the plan's steps.
const FIRST_STEPS: &[&str] = &["join the pod's cgroup", "enter the pod's network namespace"];

/// Descriptors the child uses; all close-on-exec or closed before exec.
struct Fds {
    stdin: RawFd,
    log: RawFd,
    report: RawFd,
    netns: Option<RawFd>,
    cgroup: Option<RawFd>,
}

/// Everything the child needs, made before the clone.
struct Child<'a> {
    steps: &'a [Step],
    fds: Fds,
    uid: libc::uid_t,
    gid: libc::gid_t,
    max_open_files: u64,
    max_file_bytes: u64,
    binary: &'a CString,
    /// Null-terminated, pointing into strings that outlive the child's use.
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// The VMM binary as an absolute path: a bare name is looked up next to vmletd,
/// then in PATH.
pub fn resolve_binary(binary: &Path) -> Result<PathBuf, SandboxError> {
    let not_found = || SandboxError::Io {
        op: "find",
        path: binary.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    };
    let candidates: Vec<PathBuf> = if binary.components().count() > 1 {
        vec![binary.to_owned()]
    } else {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(binary)));
        let path = std::env::var_os("PATH").unwrap_or_default();
        beside
            .into_iter()
            .chain(std::env::split_paths(&path).map(|d| d.join(binary)))
            .collect()
    };
    candidates
        .iter()
        .find(|c| c.is_file())
        .and_then(|c| std::fs::canonicalize(c).ok())
        .ok_or_else(not_found)
}

fn cstr(s: &[u8], what: &Path) -> Result<CString, SandboxError> {
    CString::new(s).map_err(|_| SandboxError::JailPath(what.to_owned()))
}

fn open_fd(path: &Path, flags: libc::c_int) -> Result<OwnedFd, SandboxError> {
    let c = cstr(path.as_os_str().as_bytes(), path)?;
    // SAFETY: `c` is a NUL-terminated path; the result is checked before use.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(SandboxError::Io {
            op: "open",
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts `cmd` jailed as `spec` says, in the network namespace `netns` and the
/// cgroup whose `cgroup.procs` is `cgroup_procs`. Returns the VMM's pid (in vmletd's
/// PID namespace) once it has exec'd. Blocks until then (a few milliseconds; a child
/// that neither execs nor fails within [`EXEC_WAIT`] is killed, an error).
pub fn spawn(
    cmd: &VmmCommand,
    spec: &JailSpec,
    cgroup_procs: Option<&Path>,
) -> Result<u32, SandboxError> {
    let binary_path = resolve_binary(&cmd.binary)?;
    let args = cmd.vm_config()?.to_args().map_err(SandboxError::VmmArgs)?;
    let steps = plan::build(cmd, spec, &binary_path)?;
    let log = open_fd(&cmd.log, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)?;
    let stdin = open_fd(Path::new("/dev/null"), libc::O_RDONLY)?;
    let netns = match &cmd.netns {
        Some(p) => Some(open_fd(p, libc::O_RDONLY)?),
        None => None,
    };
    let cgroup = match cgroup_procs {
        Some(p) => Some(open_fd(p, libc::O_WRONLY)?),
        None => None,
    };
    let mut pipe = [-1; 2];
    // SAFETY: `pipe` has room for the two descriptors; the result is checked.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(SandboxError::Io {
            op: "pipe",
            path: cmd.log.clone(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors are fresh and ours.
    let (report_r, report_w) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };

    let binary = cstr(binary_path.as_os_str().as_bytes(), &binary_path)?;
    let mut arg_strings = vec![binary.clone()];
    for a in &args {
        arg_strings.push(cstr(a.as_bytes(), &cmd.binary)?);
    }
    let env_strings: Vec<CString> = PASSED_ENV
        .iter()
        .filter_map(|k| {
            let v = std::env::var_os(k)?;
            let mut kv = format!("{k}=").into_bytes();
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let argv: Vec<*const libc::c_char> = arg_strings
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env_strings
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let child = Child {
        steps: &steps,
        fds: Fds {
            stdin: stdin.as_raw_fd(),
            log: log.as_raw_fd(),
            report: report_w.as_raw_fd(),
            netns: netns.as_ref().map(|f| f.as_raw_fd()),
            cgroup: cgroup.as_ref().map(|f| f.as_raw_fd()),
        },
        uid: spec.uid,
        gid: spec.gid,
        max_open_files: spec.max_open_files,
        max_file_bytes: spec.max_file_bytes,
        binary: &binary,
        argv: &argv,
        envp: &envp,
    };
    let mut stack = vec![0u8; STACK_BYTES];
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
    if spec.pid_namespace {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    // SAFETY: the child runs `run_child` on its own copy of the address space (no
    // CLONE_VM) and `stack`; it only makes system calls on data made above (no
    // allocation, no lock) and ends in exec or _exit.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| run_child(&child)),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| SandboxError::Io {
        op: "clone (jail)",
        path: binary_path.clone(),
        source: e.into(),
    })?;
    drop(report_w);
    let mut report = [0u8; 8];
    let Some(got) = read_report(&report_r, &mut report, EXEC_WAIT) else {
        // The child is stuck before exec: it must not hold the boot (and this
        // blocking thread) forever.
        // SAFETY: kill(2) and waitpid(2) on our own child.
        unsafe {
            libc::kill(pid.as_raw(), libc::SIGKILL);
            libc::waitpid(pid.as_raw(), std::ptr::null_mut(), 0);
        }
        return Err(SandboxError::Jail {
            step: "exec of the VMM".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the jailed child neither exec'd nor failed within {} s: killed",
                    EXEC_WAIT.as_secs()
                ),
            ),
        });
    };
    if got < report.len() {
        return u32::try_from(pid.as_raw()).map_err(|_| SandboxError::VmmExited("bad pid".into()));
    }
    // The child failed before exec and has _exit'ed: reap it.
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-parameter.
    unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
    let index = u32::from_le_bytes([report[0], report[1], report[2], report[3]]) as usize;
    let errno = i32::from_le_bytes([report[4], report[5], report[6], report[7]]);
    let names: Vec<String> = FIRST_STEPS
        .iter()
        .map(|s| s.to_string())
        .chain(steps.iter().map(Step::describe))
        .chain(LAST_STEPS.iter().map(|s| s.to_string()))
        .collect();
    Err(SandboxError::Jail {
        step: names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("step {index}")),
        source: std::io::Error::from_raw_os_error(errno),
    })
}

/// How long the child may take from clone to exec: a few milliseconds normally,
/// seconds on a loaded emulated machine.
const EXEC_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the child's report until EOF (exec closed the pipe) or a whole report;
/// `None` when neither came within `limit`.
fn read_report(fd: &OwnedFd, buf: &mut [u8; 8], limit: std::time::Duration) -> Option<usize> {
    let end = std::time::Instant::now() + limit;
    let mut got = 0;
    while got < buf.len() {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Rounded up: poll may return at the whole millisecond before `end`, and
        // the loop then asks again rather than giving up early.
        let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => continue,
            n if n < 0 => {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            _ => {}
        }
        // SAFETY: reads into the unfilled rest of `buf`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    Some(got)
}

/// Waits until the jailed VMM `pid` (vmletd's child, not tokio's) has exited, and
/// reaps it.
pub async fn wait(pid: u32) -> std::io::Result<ExitStatus> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("bad pid"))?;
    // Each SIGCHLD wakes the check; the timeout covers one that came before the
    // stream existed.
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    loop {
        let mut status = 0;
        // SAFETY: WNOHANG wait for our own child; `status` is a valid out-parameter.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        match sigchld.as_mut() {
            Some(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), s.recv()).await;
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The last errno.
fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

fn check(r: libc::c_long) -> Result<(), i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Reports step `index` failing with `err` and ends the child.
fn fail(report: RawFd, index: usize, err: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(index as u32).to_le_bytes());
    buf[4..].copy_from_slice(&err.to_le_bytes());
    // SAFETY: writes 8 bytes from `buf`, then ends the process without running
    // vmletd's exit handlers (this is a copy of vmletd).
    unsafe {
        libc::write(report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// The child: every step, then exec. Never returns.
fn run_child(c: &Child) -> isize {
    let mut report = c.fds.report;
    let mut index = 0usize;
    let mut step = |r: Result<(), i32>, report: RawFd| {
        if let Err(e) = r {
            fail(report, index, e);
        }
        index += 1;
    };
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    step(join_cgroup(c.fds.cgroup), report);
    step(enter_netns(c.fds.netns), report);
    for s in c.steps {
        step(run_step(s, c.uid, c.gid), report);
    }
    step(limits(c), report);
    // SAFETY: setsid has no arguments; its result is checked.
    step(check(unsafe { libc::setsid() }.into()), report);
    step(stdio(&c.fds, &mut report), report);
    step(close_fds(), report);
    step(drop_bounding_set(), report);
    step(switch_ids(c.uid, c.gid), report);
    step(clear_caps(), report);
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    step(
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into()),
        report,
    );
    step(signals(), report);
    // SAFETY: all three are NUL-terminated, the arrays null-terminated; on success
    // this does not return.
    unsafe { libc::execve(c.binary.as_ptr(), c.argv.as_ptr(), c.envp.as_ptr()) };
    step(Err(errno()), report);
    127
}

fn join_cgroup(fd: Option<RawFd>) -> Result<(), i32> {
    let Some(fd) = fd else { return Ok(()) };
    // SAFETY: writes one byte ("0": this process) to cgroup.procs.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    check(n as libc::c_long)
}

fn enter_netns(fd: Option<RawFd>) -> Result<(), i32> {
    let Some(fd) = fd else { return Ok(()) };
    // SAFETY: setns on a namespace descriptor; the result is checked.
    check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }.into())
}

fn run_step(s: &Step, uid: libc::uid_t, gid: libc::gid_t) -> Result<(), i32> {
    let null = std::ptr::null::<libc::c_char>();
    // Below, every path is a NUL-terminated string made before the clone, every
    // other argument a constant or null where the call allows it; each result is
    // checked.
    match s {
        Step::PrivateMounts => {
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            // SAFETY: see above.
            let r = unsafe { libc::mount(null, c"/".as_ptr(), null, flags, std::ptr::null()) };
            check(r.into())
        }
        Step::MountRoot { dir, options } => {
            let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
            // SAFETY: see above.
            let r = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    flags,
                    options.as_ptr().cast(),
                )
            };
            check(r.into())
        }
        Step::Dir(p) => {
            // SAFETY: see above.
            if unsafe { libc::mkdir(p.as_ptr(), 0o700) } < 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
            // SAFETY: see above.
            check(unsafe { libc::chown(p.as_ptr(), uid, gid) }.into())
        }
        Step::MountPoint(p) => {
            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            // SAFETY: see above.
            let fd = unsafe { libc::open(p.as_ptr(), flags, 0o600) };
            check(fd.into())?;
            // SAFETY: closes the descriptor just opened.
            unsafe { libc::close(fd) };
            Ok(())
        }
        Step::Bind {
            src,
            dst,
            writable,
            exec,
        } => {
            let (s, d) = (src.as_ptr(), dst.as_ptr());
            // SAFETY: see above.
            let r = unsafe { libc::mount(s, d, null, libc::MS_BIND, std::ptr::null()) };
            check(r.into())?;
            let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
            if !writable {
                flags |= libc::MS_RDONLY;
            }
            if !exec {
                flags |= libc::MS_NOEXEC;
            }
            // SAFETY: see above.
            check(unsafe { libc::mount(null, dst.as_ptr(), null, flags, std::ptr::null()) }.into())
        }
        Step::Device { path, rdev } => {
            // SAFETY: see above.
            check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, *rdev) }.into())?;
            // SAFETY: see above.
            check(unsafe { libc::chown(path.as_ptr(), uid, gid) }.into())
        }
        Step::Pivot(root) => {
            // SAFETY: see above. pivot_root(".", ".") stacks the old root on the new
            // one; detaching "." then leaves only the jail.
            unsafe {
                check(libc::chdir(root.as_ptr()).into())?;
                check(libc::syscall(
                    libc::SYS_pivot_root,
                    c".".as_ptr(),
                    c".".as_ptr(),
                ))?;
                check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into())?;
                check(libc::chdir(c"/".as_ptr()).into())
            }
        }
        Step::SealRoot => {
            let flags = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NOEXEC;
            // SAFETY: see above.
            check(unsafe { libc::mount(null, c"/".as_ptr(), null, flags, std::ptr::null()) }.into())
        }
    }
}

fn limits(c: &Child) -> Result<(), i32> {
    for (resource, value) in [
        (libc::RLIMIT_NOFILE, c.max_open_files),
        (libc::RLIMIT_FSIZE, c.max_file_bytes),
        // A core dump would hold the guest's memory.
        (libc::RLIMIT_CORE, 0),
    ] {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `lim` is a valid rlimit for the call.
        check(unsafe { libc::setrlimit(resource, &lim) }.into())?;
    }
    Ok(())
}

/// stdin from /dev/null, stdout and stderr to the VMM's log, the report pipe moved
/// to descriptor 3 (close-on-exec) so that everything above it can be closed.
fn stdio(fds: &Fds, report: &mut RawFd) -> Result<(), i32> {
    // SAFETY: dup2/dup3 on descriptors this process holds; results checked.
    unsafe {
        check(libc::dup2(fds.stdin, 0).into())?;
        check(libc::dup2(fds.log, 1).into())?;
        check(libc::dup2(fds.log, 2).into())?;
        if *report != 3 {
            check(libc::dup3(*report, 3, libc::O_CLOEXEC).into())?;
            *report = 3;
        }
    }
    Ok(())
}

fn close_fds() -> Result<(), i32> {
    // SAFETY: closes descriptors 4 and up, none of which the rest of the child uses.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    if r < 0 && errno() == libc::ENOSYS {
        for fd in 4..65536 {
            // SAFETY: as above, one by one (kernels before 5.9).
            unsafe { libc::close(fd) };
        }
        return Ok(());
    }
    check(r)
}

fn drop_bounding_set() -> Result<(), i32> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            // Past the last capability this kernel knows.
            if errno() == libc::EINVAL {
                return Ok(());
            }
            return Err(errno());
        }
    }
    Ok(())
}

/// Raw system calls, not glibc's wrappers: those apply the change to every thread of
/// the process (the setxid broadcast), walking glibc's thread list under a lock. The
/// child is a clone of multi-threaded vmletd: the list names the parent's threads and
/// the lock may have been held by one of them at the clone, so the wrapper can wait
/// forever. The child has a single thread; the kernel calls change just that one.
fn switch_ids(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), i32> {
    // SAFETY: `gid` lives across setgroups; the others take integers only. A root
    // process that sets all its uids to a non-zero one loses its permitted and
    // effective capabilities (no SECBIT_KEEP_CAPS).
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            1usize,
            &gid as *const libc::gid_t,
        ))?;
        check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))
    }
}

/// The inheritable and ambient sets emptied too (capset with all zero).
fn clear_caps() -> Result<(), i32> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: PR_CAP_AMBIENT takes integers; capset reads a v3 header and two data
    // structs that live across the call.
    unsafe {
        let r = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        if r < 0 && errno() != libc::EINVAL {
            return Err(errno());
        }
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))
    }
}

/// No blocked signal; SIGPIPE back to its default (vmletd ignores it); SIGXFSZ
/// ignored, so that a write past RLIMIT_FSIZE fails with EFBIG instead of killing the
/// VM.
fn signals() -> Result<(), i32> {
    // SAFETY: `set` is initialised by sigemptyset before use; signal() takes a
    // signal number and a disposition constant.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()).into())?;
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
            || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
        {
            return Err(errno());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [-1; 2];
        // SAFETY: `p` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh and ours.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    /// The child drops its ids while other threads of the parent come and go (and take
    /// glibc's thread-list lock): it must never wait on the parent's threads.
    #[test]
    fn a_cloned_child_switches_ids_while_the_parent_starts_threads() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::spawn(|| {}).join().unwrap();
                }
            })
        };
        // SAFETY: geteuid takes no argument.
        let root = unsafe { libc::geteuid() } == 0;
        let mut stack = vec![0u8; STACK_BYTES];
        for _ in 0..200 {
            let child = Box::new(|| {
                let code = match switch_ids(65534, 65534) {
                    Ok(()) => 0,
                    Err(e) => e,
                };
                // SAFETY: ends the child without running the parent's exit code.
                unsafe { libc::_exit(code) }
            });
            // SAFETY: the child only makes system calls and ends in _exit.
            let pid = unsafe {
                nix::sched::clone(
                    child,
                    &mut stack,
                    nix::sched::CloneFlags::empty(),
                    Some(libc::SIGCHLD),
                )
            }
            .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let status = loop {
                let mut status = 0;
                // SAFETY: waits for our own child.
                let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
                if r == pid.as_raw() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    // SAFETY: kill(2) and waitpid(2) on our own child.
                    unsafe {
                        libc::kill(pid.as_raw(), libc::SIGKILL);
                        libc::waitpid(pid.as_raw(), std::ptr::null_mut(), 0);
                    }
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("the cloned child hung in switch_ids");
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            let code = libc::WEXITSTATUS(status);
            if root {
                assert_eq!(code, 0, "switch_ids failed with errno {code}");
            } else {
                assert_eq!(code, libc::EPERM, "unprivileged switch_ids: errno {code}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }

    #[test]
    fn a_report_an_exec_and_a_stuck_child_are_told_apart() {
        // A failed step: a whole report.
        let (r, w) = pipe();
        let mut f = std::fs::File::from(w);
        std::io::Write::write_all(&mut f, &[1, 0, 0, 0, 2, 0, 0, 0]).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read_report(&r, &mut buf, Duration::from_secs(5)), Some(8));
        assert_eq!(buf, [1, 0, 0, 0, 2, 0, 0, 0]);
        // The exec closed the pipe: end of file, nothing read.
        let (r, w) = pipe();
        drop(w);
        assert_eq!(read_report(&r, &mut buf, Duration::from_secs(5)), Some(0));
        // A child that neither writes nor execs: given up at the limit.
        let (r, _w) = pipe();
        let start = std::time::Instant::now();
        assert_eq!(read_report(&r, &mut buf, Duration::from_millis(300)), None);
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
}
