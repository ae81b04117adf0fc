//! Forking container processes, and everything the child does between `fork` and
//! `execve`: namespaces, mounts and `pivot_root` ([`super::mounts`]), the user
//! ([`super::user`]), limits, credentials, capabilities, seccomp.
//!
//! vmlet-init runs on one thread, so after `fork` the child may allocate and use std
//! freely (no other thread can hold a lock); [`spawn`] checks that this still holds.
//!
//! PID namespaces: a process enters a PID namespace only through its parent's
//! `pid_for_children`, so vmlet-init points its own at the target namespace (a new
//! one with `unshare`, or an existing one with `setns`), forks, and points it back.
//! The child is thus a direct child of vmlet-init, which reaps it and gets its status,
//! whatever namespace it runs in.
//!
//! The child reports over a close-on-exec pipe: `R` and the identity it got
//! ([`Identity::encode`]) when set up (for containers, which then wait for a byte on
//! the "go" pipe before `execve`), `E<message>` on failure; end of file means
//! `execve` succeeded.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{fork, pipe2, AccessFlags, ForkResult, Gid, Pid, Uid};

use super::caps::CapSets;
use super::mounts::{self, RootPlan};
use super::spec::{ProcessSpec, UserNs};
use super::stdio::{nonblocking, read_fd, write_fd, AsyncFdOwned, ChildFds};
use super::user::{self, Identity};

/// Longest error message a child sends.
const MAX_CHILD_MESSAGE: usize = 4096;

/// Starting a process failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// vmlet-init has more than one thread, so forking is not safe.
    #[error("refusing to fork: vmlet-init has {0} threads")]
    Threads(usize),
    /// A system call in the parent failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: nix::Error,
    },
    /// The child reported a failure.
    #[error("{0}")]
    Child(String),
    /// The child died without a word.
    #[error("the process died while being set up")]
    Died,
    /// The child did not report in time.
    #[error("the process did not finish its setup within {0:?}")]
    Timeout(Duration),
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> SpawnError {
    move |source| SpawnError::Sys { what, source }
}

/// The PID namespace a new process goes into.
#[derive(Debug, Clone, Copy)]
pub enum PidNs<'a> {
    /// A new one, with the process as its init.
    New,
    /// An existing one.
    Join(BorrowedFd<'a>),
}

/// Where the new process gets its mounts.
#[derive(Debug)]
pub enum MountNs<'a> {
    /// A new mount namespace with this root.
    New(RootPlan<'a>),
    /// An existing one: a process joining a running container.
    Join(BorrowedFd<'a>),
}

/// A user namespace the new process joins before it takes its ids (after its mounts),
/// with its mappings.
#[derive(Debug, Clone, Copy)]
pub struct JoinUserNs<'a> {
    /// The namespace.
    pub fd: BorrowedFd<'a>,
    /// Its mappings.
    pub ns: &'a UserNs,
}

impl<'a> JoinUserNs<'a> {
    /// The namespace to join, when the container has one (its descriptor and its
    /// mappings both present).
    pub fn of(fd: Option<&'a OwnedFd>, ns: Option<&'a UserNs>) -> Option<JoinUserNs<'a>> {
        Some(JoinUserNs {
            fd: fd?.as_fd(),
            ns: ns?,
        })
    }
}

/// A forked process, before it runs its program.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (in vmlet-init's namespace).
    pub pid: Pid,
    go: Option<OwnedFd>,
    status: Arc<AsyncFdOwned>,
}

fn errno(e: &io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(1)
}

/// Forks into `pid_ns`: points vmlet-init's `pid_for_children` there, forks, and points
/// it back at `own_pid_ns` (in the parent; the child keeps it for its own children).
fn fork_in(pid_ns: PidNs<'_>, own_pid_ns: BorrowedFd<'_>) -> Result<ForkResult, SpawnError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(SpawnError::Threads(threads));
    }
    match pid_ns {
        PidNs::New => unshare(CloneFlags::CLONE_NEWPID).map_err(sys("new PID namespace"))?,
        PidNs::Join(fd) => {
            setns(fd, CloneFlags::CLONE_NEWPID).map_err(sys("join PID namespace"))?
        }
    }
    // SAFETY: vmlet-init is single-threaded (checked above), so the child may run any
    // code; every caller's child ends in execve or _exit.
    let forked = unsafe { fork() };
    if !matches!(forked, Ok(ForkResult::Child)) {
        if let Err(e) = setns(own_pid_ns, CloneFlags::CLONE_NEWPID) {
            crate::console::error(format_args!(
                "cannot restore init's PID namespace for children: {e}"
            ));
        }
    }
    forked.map_err(sys("fork"))
}

/// Forks a process for `spec` in the given namespaces. With `wait_for_go`, the child
/// stops just before `execve` until [`Spawned::go`]. `own_pid_ns` is vmlet-init's
/// own PID namespace, restored after the fork.
pub fn spawn(
    spec: &ProcessSpec,
    pid_ns: PidNs<'_>,
    mnt_ns: MountNs<'_>,
    userns: Option<JoinUserNs<'_>>,
    fds: ChildFds,
    wait_for_go: bool,
    own_pid_ns: BorrowedFd<'_>,
) -> Result<Spawned, SpawnError> {
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("status pipe"))?;
    let (go_r, go_w) = if wait_for_go {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("start pipe"))?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    // Everything the child needs that could fail to allocate is prepared here.
    let argv0 = spec.args[0].clone();
    match fork_in(pid_ns, own_pid_ns)? {
        ForkResult::Child => {
            drop(status_r);
            drop(go_w);
            // A panic must not unwind into the copy of vmlet-init's runtime in the child.
            let run = std::panic::AssertUnwindSafe(|| {
                child(spec, &argv0, mnt_ns, userns, fds, go_r, &status_w)
            });
            let err = match std::panic::catch_unwind(run) {
                Ok(Ok(never)) => match never {},
                Ok(Err(e)) => e,
                Err(_) => "the process's setup panicked".to_owned(),
            };
            let mut msg = Vec::with_capacity(err.len() + 1);
            msg.push(b'E');
            msg.extend_from_slice(&err.as_bytes()[..err.len().min(MAX_CHILD_MESSAGE)]);
            let _ = nix::unistd::write(&status_w, &msg);
            // SAFETY: _exit ends the child without running the parent's atexit handlers
            // or flushing its copied stdio buffers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(fds);
            let status = nonblocking(status_r).map_err(|e| SpawnError::Sys {
                what: "status pipe",
                source: errno(&e),
            })?;
            Ok(Spawned {
                pid: child,
                go: go_w,
                status,
            })
        }
    }
}

/// What the child said.
enum Report {
    Ready(Identity),
    Failed(String),
    Eof,
}

/// Reads exactly `buf.len()` bytes; `false` at an early end of file.
async fn read_exact(fd: &AsyncFdOwned, buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        match read_fd(fd, &mut buf[done..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => done += n,
        }
    }
    true
}

/// The identity that follows an `R`.
async fn read_identity(fd: &AsyncFdOwned) -> Option<Identity> {
    let mut header = [0u8; 12];
    if !read_exact(fd, &mut header).await {
        return None;
    }
    let (mut id, count) = Identity::decode_header(header)?;
    let mut groups = vec![0u8; count * 4];
    if !read_exact(fd, &mut groups).await {
        return None;
    }
    id.decode_groups(&groups);
    Some(id)
}

impl Spawned {
    async fn report(&self, timeout: Duration) -> Result<Report, SpawnError> {
        let read = async {
            let mut first = [0u8; 1];
            match read_fd(&self.status, &mut first).await {
                Ok(0) | Err(_) => return Report::Eof,
                Ok(_) if first[0] == b'R' => {
                    return read_identity(&self.status)
                        .await
                        .map_or(Report::Eof, Report::Ready)
                }
                Ok(_) => {}
            }
            let mut msg = Vec::new();
            let mut buf = [0u8; 512];
            while msg.len() < MAX_CHILD_MESSAGE {
                match read_fd(&self.status, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => msg.extend_from_slice(&buf[..n]),
                }
            }
            Report::Failed(String::from_utf8_lossy(&msg).into_owned())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| SpawnError::Timeout(timeout))
    }

    /// Waits until a container's child has set itself up and waits for [`Self::go`];
    /// returns the identity the process got.
    pub async fn ready(&self, timeout: Duration) -> Result<Identity, SpawnError> {
        match self.report(timeout).await? {
            Report::Ready(id) => Ok(id),
            Report::Failed(msg) => Err(SpawnError::Child(msg)),
            Report::Eof => Err(SpawnError::Died),
        }
    }

    /// Lets the child run its program and waits until `execve` succeeded.
    pub async fn go(&mut self, timeout: Duration) -> Result<(), SpawnError> {
        if let Some(go) = self.go.take() {
            let failed = |e: io::Error| SpawnError::Sys {
                what: "start pipe",
                source: errno(&e),
            };
            let go = nonblocking(go).map_err(failed)?;
            write_fd(&go, b"g").await.map_err(failed)?;
        }
        self.executed(timeout).await
    }

    /// Waits until `execve` succeeded (for processes that do not wait for a go).
    pub async fn executed(&self, timeout: Duration) -> Result<(), SpawnError> {
        match self.report(timeout).await? {
            Report::Eof => Ok(()),
            Report::Failed(msg) => Err(SpawnError::Child(msg)),
            Report::Ready(_) => Err(SpawnError::Child("unexpected ready report".into())),
        }
    }
}

// ------------------------------------------------------------------ the child

type ChildResult<T = ()> = Result<T, String>;

fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

fn child(
    spec: &ProcessSpec,
    argv0: &CStr,
    mnt_ns: MountNs<'_>,
    userns: Option<JoinUserNs<'_>>,
    fds: ChildFds,
    go: Option<OwnedFd>,
    status: &OwnedFd,
) -> ChildResult<Infallible> {
    reset_signals();
    nix::unistd::setsid().map_err(ctx(|| "setsid".into()))?;
    let terminal = match fds {
        ChildFds::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (fd, target) in [(&stdin, 0), (&stdout, 1), (&stderr, 2)] {
                dup_onto(fd, target)?;
            }
            None
        }
        ChildFds::Terminal { socket, size } => Some((socket, size)),
    };
    // Nothing of vmlet-init's may leak into the container's program.
    // SAFETY: close_range takes no pointers.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };

    match mnt_ns {
        MountNs::New(plan) => {
            unshare(CloneFlags::CLONE_NEWNS).map_err(ctx(|| "new mount namespace".into()))?;
            mounts::setup_root(&plan).map_err(|e| e.to_string())?;
        }
        MountNs::Join(fd) => {
            setns(fd, CloneFlags::CLONE_NEWNS).map_err(ctx(|| "join mount namespace".into()))?
        }
    }
    // The container's own /etc/passwd and /etc/group, now that its root is `/`.
    let id = user::resolve(&spec.user, Path::new("/etc")).map_err(|e| e.to_string())?;
    if let Some((socket, size)) = terminal {
        // Owned by the process's user as vmlet-init's namespace names it.
        let owner = match userns {
            Some(u) => (
                u.ns.host_uid(id.uid).unwrap_or(id.uid),
                u.ns.host_gid(id.gid).unwrap_or(id.gid),
            ),
            None => (id.uid, id.gid),
        };
        open_terminal(&socket, size, owner)?;
    }
    set_cwd_and_limits(spec)?;
    if let Some(u) = userns {
        // Last of the steps that need vmlet-init's privileges: from here on the
        // process's capabilities are the user namespace's, and its ids must be mapped.
        setns(u.fd, CloneFlags::CLONE_NEWUSER)
            .map_err(ctx(|| "join the container's user namespace".into()))?;
    }
    if let (Some(filter), false) = (&spec.seccomp, spec.no_new_privileges) {
        // Installing a filter without no_new_privs takes CAP_SYS_ADMIN: before the
        // capabilities go, as runc does.
        filter.install().map_err(|e| e.to_string())?;
    }
    set_credentials(spec, &id)?;
    if let Some(go) = go {
        let mut ready = vec![b'R'];
        ready.extend(id.encode());
        write_all(status, &ready).map_err(ctx(|| "report ready".into()))?;
        let mut byte = [0u8; 1];
        match nix::unistd::read(&go, &mut byte) {
            Ok(1) => {}
            // vmlet-init dropped the container before starting it.
            // SAFETY: _exit without cleanup, as after a failed exec.
            _ => unsafe { libc::_exit(0) },
        }
    }
    exec(spec, argv0)
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The working directory (created if missing), rlimits and oom_score_adj.
fn set_cwd_and_limits(spec: &ProcessSpec) -> ChildResult {
    if let Err(e) = std::env::set_current_dir(&spec.cwd) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(format!("working directory {}: {e}", spec.cwd.display()));
        }
        std::fs::create_dir_all(&spec.cwd)
            .and_then(|()| std::env::set_current_dir(&spec.cwd))
            .map_err(ctx(|| format!("working directory {}", spec.cwd.display())))?;
    }
    for r in &spec.rlimits {
        nix::sys::resource::setrlimit(r.resource, r.soft, r.hard)
            .map_err(ctx(|| format!("rlimit {:?}", r.resource)))?;
    }
    // Always written: the child inherited init's -1000, which would make it unkillable
    // by the OOM killer and leave a container over its memory limit hanging.
    std::fs::write(
        "/proc/self/oom_score_adj",
        spec.oom_score_adj.unwrap_or(0).to_string(),
    )
    .map_err(ctx(|| "oom_score_adj".into()))
}

/// Groups, gid, uid, capabilities and no_new_privs.
fn set_credentials(spec: &ProcessSpec, id: &Identity) -> ChildResult {
    let caps = spec
        .caps
        .clone()
        .unwrap_or_else(|| CapSets::default_for(id.uid));
    caps.apply_bounding()
        .map_err(ctx(|| "capability bounding set".into()))?;
    let groups: Vec<Gid> = id.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups).map_err(ctx(|| "setgroups".into()))?;
    let gid = Gid::from_raw(id.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(ctx(|| format!("setgid {}", id.gid)))?;
    if id.uid != 0 {
        // Keep the permitted set across the switch; apply_sets trims it.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    let uid = Uid::from_raw(id.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(ctx(|| format!("setuid {}", id.uid)))?;
    caps.apply_sets().map_err(ctx(|| "capabilities".into()))?;
    if spec.no_new_privileges {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn dup_onto(fd: &OwnedFd, target: i32) -> ChildResult {
    // SAFETY: dup2 on descriptors this process owns.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(format!("dup2: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens a terminal from the container's `/dev/ptmx`, sends its master to vmlet-init
/// and makes the slave the process's controlling terminal and fds 0, 1 and 2.
fn open_terminal(socket: &OwnedFd, size: (u16, u16), owner: (u32, u32)) -> ChildResult {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(ctx(|| "open /dev/ptmx".into()))?;
    grantpt(&master).map_err(ctx(|| "grantpt".into()))?;
    unlockpt(&master).map_err(ctx(|| "unlockpt".into()))?;
    let name = ptsname_r(&master).map_err(ctx(|| "ptsname".into()))?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .map_err(ctx(|| format!("open {name}")))?
        .into();
    nix::unistd::fchown(
        &slave,
        Some(Uid::from_raw(owner.0)),
        Some(Gid::from_raw(owner.1)),
    )
    .map_err(ctx(|| format!("chown {name}")))?;
    super::stdio::set_winsize(slave.as_fd(), size.0, size.1)
        .map_err(ctx(|| "terminal size".into()))?;
    super::stdio::send_fd(socket.as_fd(), master.as_fd().as_fd())
        .map_err(ctx(|| "send the terminal to vmlet-init".into()))?;
    drop(master);
    for target in 0..3 {
        dup_onto(&slave, target)?;
    }
    // SAFETY: TIOCSCTTY takes an integer argument.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!(
            "set controlling terminal: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring default dispositions; no handler pointers involved.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// The program to run: `argv[0]` itself when it has a slash, else the first file of
/// that name in `PATH` the process may execute.
fn find_program(spec: &ProcessSpec, name: &[u8]) -> Result<CString, nix::Error> {
    let candidates: Vec<PathBuf> = if name.contains(&b'/') {
        vec![PathBuf::from(std::ffi::OsStr::from_bytes(name))]
    } else {
        spec.path
            .iter()
            .map(|d| d.join(std::ffi::OsStr::from_bytes(name)))
            .collect()
    };
    let mut last = nix::Error::ENOENT;
    for candidate in candidates {
        let Ok(path) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        match nix::unistd::access(path.as_c_str(), AccessFlags::X_OK) {
            Ok(()) if candidate.is_file() => return Ok(path),
            Ok(()) => last = nix::Error::EACCES,
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn exec(spec: &ProcessSpec, argv0: &CStr) -> ChildResult<Infallible> {
    let name = argv0.to_bytes();
    let failed = |e: nix::Error| {
        format!(
            "cannot run {:?}: {}",
            String::from_utf8_lossy(name),
            match e {
                nix::Error::ENOENT =>
                    "executable file not found in $PATH or the container".to_owned(),
                e => e.to_string(),
            }
        )
    };
    let path = find_program(spec, name).map_err(failed)?;
    if let (Some(filter), true) = (&spec.seccomp, spec.no_new_privileges) {
        // As late as possible, so that few syscalls of the setup run under it.
        filter.install().map_err(|e| e.to_string())?;
    }
    match nix::unistd::execve(&path, &spec.args, &spec.env) {
        Ok(never) => match never {},
        Err(e) => Err(failed(e)),
    }
}

/// Starts the holder of the pod-wide PID namespace: the init of that namespace, which
/// only reaps the orphans of containers that share it.
pub fn spawn_pid_ns_holder(own_pid_ns: BorrowedFd<'_>) -> Result<Pid, SpawnError> {
    match fork_in(PidNs::New, own_pid_ns)? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            // SAFETY: close_range takes no pointers.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
            let mut set = SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGCHLD);
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), None);
            loop {
                let _ = set.wait();
                while let Ok(status) =
                    nix::sys::wait::waitpid(None::<Pid>, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
        }
    }
}

/// vmlet-init's own PID namespace, to restore after forking into another.
pub fn own_pid_ns() -> io::Result<OwnedFd> {
    std::fs::File::open("/proc/self/ns/pid").map(OwnedFd::from)
}

/// Opens namespace `kind` ("pid", "mnt") of process `pid`.
pub fn open_ns(pid: Pid, kind: &str) -> io::Result<OwnedFd> {
    std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).map(OwnedFd::from)
}

/// Borrows an owned descriptor (for [`PidNs::Join`] / [`MountNs::Join`]).
pub fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}
