//! Forking container processes, and everything the child does between `fork` and
//! `execve`: namespaces, mounts and `pivot_root`, limits, credentials, capabilities.
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
//! The child reports over a close-on-exec pipe: `R` when set up (for containers,
//! which then wait for a byte on the "go" pipe before `execve`), `E<message>` on
//! failure; end of file means `execve` succeeded.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{fork, pipe2, ForkResult, Gid, Pid, Uid};

use super::spec::{MountSpec, ProcessSpec};
use super::stdio::{nonblocking, read_fd, write_fd, AsyncFdOwned, ChildFds};

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
    /// Remount the root read-only at the end.
    pub readonly: bool,
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
            let run =
                std::panic::AssertUnwindSafe(|| child(spec, &argv0, mnt_ns, fds, go_r, &status_w));
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
    Ready,
    Failed(String),
    Eof,
}

impl Spawned {
    async fn report(&self, timeout: Duration) -> Result<Report, SpawnError> {
        let read = async {
            let mut first = [0u8; 1];
            match read_fd(&self.status, &mut first).await {
                Ok(0) | Err(_) => return Report::Eof,
                Ok(_) if first[0] == b'R' => return Report::Ready,
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

    /// Waits until a container's child has set itself up and waits for [`Self::go`].
    pub async fn ready(&self, timeout: Duration) -> Result<(), SpawnError> {
        match self.report(timeout).await? {
            Report::Ready => Ok(()),
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
            Report::Ready => Err(SpawnError::Child("unexpected ready report".into())),
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
            setup_root(&plan)?;
        }
        MountNs::Join(fd) => {
            setns(fd, CloneFlags::CLONE_NEWNS).map_err(ctx(|| "join mount namespace".into()))?
        }
    }
    if let Some((socket, size)) = terminal {
        open_terminal(&socket, size, spec)?;
    }
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
    .map_err(ctx(|| "oom_score_adj".into()))?;
    spec.caps
        .apply_bounding()
        .map_err(ctx(|| "capability bounding set".into()))?;
    let groups: Vec<Gid> = spec.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups).map_err(ctx(|| "setgroups".into()))?;
    let gid = Gid::from_raw(spec.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(ctx(|| format!("setgid {}", spec.gid)))?;
    if spec.uid != 0 {
        // Keep the permitted set across the switch; apply_sets trims it.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    let uid = Uid::from_raw(spec.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(ctx(|| format!("setuid {}", spec.uid)))?;
    spec.caps
        .apply_sets()
        .map_err(ctx(|| "capabilities".into()))?;
    if spec.no_new_privileges {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
        }
    }
    if let Some(go) = go {
        nix::unistd::write(status, b"R").map_err(ctx(|| "report ready".into()))?;
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

fn dup_onto(fd: &OwnedFd, target: i32) -> ChildResult {
    // SAFETY: dup2 on descriptors this process owns.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(format!("dup2: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens a terminal from the container's `/dev/ptmx`, sends its master to vmlet-init
/// and makes the slave the process's controlling terminal and fds 0, 1 and 2.
fn open_terminal(socket: &OwnedFd, size: (u16, u16), spec: &ProcessSpec) -> ChildResult {
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
        Some(Uid::from_raw(spec.uid)),
        Some(Gid::from_raw(spec.gid)),
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

fn exec(spec: &ProcessSpec, argv0: &CStr) -> ChildResult<Infallible> {
    let name = argv0.to_bytes();
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
        match nix::unistd::execve(&path, &spec.args, &spec.env) {
            Ok(never) => match never {},
            Err(e @ (nix::Error::ENOENT | nix::Error::ENOTDIR)) => last = e,
            Err(e) => last = e,
        }
    }
    Err(format!(
        "cannot run {:?}: {}",
        String::from_utf8_lossy(name),
        match last {
            nix::Error::ENOENT => "executable file not found in $PATH or the container".to_owned(),
            e => e.to_string(),
        }
    ))
}

/// Resolves `path` (absolute, inside the container) under `root`, following symlinks
/// as if `root` were `/`, so that nothing a container image contains can point a
/// mount outside it.
pub fn resolve_in_root(root: &Path, path: &Path) -> ChildResult<PathBuf> {
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
                    return Err(format!("too many symlinks in {}", path.display()));
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

fn mkdir_p(path: &Path) -> ChildResult {
    std::fs::create_dir_all(path).map_err(ctx(|| format!("create {}", path.display())))
}

/// Creates `target` as an empty file (its parents as directories) if it is missing.
fn touch(target: &Path) -> ChildResult {
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
) -> ChildResult {
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

/// Binds `source` on `target` (created as a file or directory like `source`).
fn bind(source: &Path, target: &Path, flags: MsFlags, recursive: bool) -> ChildResult {
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
    do_mount(Some(source), target, None, bind_flags, None)?;
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

const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The container's root: kernel file systems, `/dev`, the pod's `/etc` files and the
/// requested mounts under `plan.root`, which then becomes `/`.
fn setup_root(plan: &RootPlan<'_>) -> ChildResult {
    // Nothing mounted here may propagate back to vmlet-init's namespace.
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_proc_sys(plan.root)?;
    mount_dev(&resolve_in_root(plan.root, Path::new("/dev"))?, plan.shm)?;
    bind_etc_files(plan)?;
    mount_requested(plan)?;
    pivot_into(plan.root, plan.readonly)
}

/// Mount flags of the kernel's virtual file systems in a container.
const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// `/proc`, and `/sys` read-only.
fn mount_proc_sys(root: &Path) -> ChildResult {
    let proc = resolve_in_root(root, Path::new("/proc"))?;
    mkdir_p(&proc)?;
    do_mount(None, &proc, Some("proc"), NOSUID_NODEV_NOEXEC, None)?;
    let sys = resolve_in_root(root, Path::new("/sys"))?;
    mkdir_p(&sys)?;
    do_mount(
        None,
        &sys,
        Some("sysfs"),
        NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
        None,
    )
}

/// A fresh `/dev` at `dev`: the basic device nodes, the container's own devpts, the
/// standard links, the pod's `/dev/shm` (`shm`) and an mqueue.
fn mount_dev(dev: &Path, shm: &Path) -> ChildResult {
    mkdir_p(dev)?;
    do_mount(
        None,
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for node in DEV_NODES {
        bind(
            &Path::new("/dev").join(node),
            &dev.join(node),
            MsFlags::empty(),
            false,
        )?;
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
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(ctx(|| format!("symlink /dev/{link}")))?;
    }
    bind(shm, &dev.join("shm"), MsFlags::empty(), false)?;
    let mqueue = dev.join("mqueue");
    mkdir_p(&mqueue)?;
    do_mount(None, &mqueue, Some("mqueue"), NOSUID_NODEV_NOEXEC, None)
}

/// The pod's `/etc` files (hosts, resolv.conf, hostname), read-only, except where the
/// container mounts its own.
fn bind_etc_files(plan: &RootPlan<'_>) -> ChildResult {
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
        )?;
    }
    Ok(())
}

/// The container's mounts (binds and file systems), in order, with their propagation.
fn mount_requested(plan: &RootPlan<'_>) -> ChildResult {
    for m in plan.mounts {
        let target = resolve_in_root(plan.root, &m.destination)?;
        if m.is_bind() {
            bind(Path::new(&m.source), &target, m.flags, m.recursive)?;
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

/// Makes the mount at `target` and every mount below it read-only.
fn readonly_recursively(target: &Path) -> ChildResult {
    /// `struct mount_attr` of mount_setattr(2), which libc does not define.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| ctx(|| format!("path {}", target.display()))(std::io::Error::other(e)))?;
    // SAFETY: `path` is a NUL-terminated string and `attr` a valid mount_attr whose
    // size is passed; the kernel only reads both during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(ctx(|| {
            format!("make {} read-only recursively", target.display())
        })(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes `root` the process's `/` (pivot_root, the old root detached), read-only if
/// asked.
fn pivot_into(root: &Path, readonly: bool) -> ChildResult {
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
        assert_eq!(
            resolve_in_root(root, Path::new("/loop")),
            Err("too many symlinks in /loop".to_owned())
        );
    }
}
