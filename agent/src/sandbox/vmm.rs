//! The vmlet-vmm process of a pod: spawning it so that it outlives vmletd, finding it
//! again after a restart, signalling it, and its control socket. Its command line
//! and control requests are the typed ones of `vmlet-vmm-api`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use vmlet_vmm_api::config::{
    DriveConfig, FsConfig, NetConfig, SerialLogLimits, SerialOutput, VmConfig, VsockConfig,
};
use vmlet_vmm_api::control::{Request, Response};

use super::error::SandboxError;

/// Longest a control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// The guest's vsock context ID (each VM has its own vsock device, so all share it).
const GUEST_CID: u64 = 3;

/// What to start.
#[derive(Debug, Clone)]
pub struct VmmCommand {
    /// vmlet-vmm.
    pub binary: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// Extra kernel command line.
    pub kernel_args: String,
    /// Offer the guest free page reporting.
    pub free_page_reporting: bool,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory.
    pub mem_mib: u64,
    /// Drives: (id, file, read-only).
    pub drives: Vec<(String, PathBuf, bool)>,
    /// Hybrid vsock socket.
    pub vsock: PathBuf,
    /// Control socket.
    pub control: PathBuf,
    /// Serial console log.
    pub console: PathBuf,
    /// What the console log keeps.
    pub console_limits: SerialLogLimits,
    /// The VMM's own stdout/stderr.
    pub log: PathBuf,
    /// Where the VMM writes its exit record (see [`super::read_exit_record`]).
    pub exit_record: PathBuf,
    /// Network namespace to run in (the pod's), if any.
    pub netns: Option<PathBuf>,
    /// Network cards: (tap in `netns`, guest MAC).
    pub nets: Vec<(String, String)>,
    /// virtio-fs devices: (tag, vhost-user backend socket).
    pub fs: Vec<(String, PathBuf)>,
    /// The jail to run in (None: as root in vmletd's namespaces).
    pub jail: Option<super::jail::JailSpec>,
    /// The `cgroup.procs` of the pod's cgroup, which the VMM joins before exec.
    pub cgroup: Option<PathBuf>,
    /// Restore the guest from the template snapshot in this directory (read-only in
    /// the jail) instead of booting it.
    pub restore: Option<PathBuf>,
    /// A directory the VMM may write a snapshot into (writable in the jail).
    pub snapshot_dir: Option<PathBuf>,
}

impl VmmCommand {
    /// The VMM's launch configuration.
    pub fn vm_config(&self) -> Result<VmConfig, SandboxError> {
        Ok(VmConfig {
            initramfs: Some(self.initramfs.clone()),
            cmdline: self.kernel_args.clone(),
            vcpus: u8::try_from(self.vcpus).map_err(|_| SandboxError::Vcpus(self.vcpus))?,
            mem_mib: self.mem_mib,
            drives: self
                .drives
                .iter()
                .map(|(id, path, read_only)| DriveConfig {
                    id: id.clone(),
                    path: path.clone(),
                    read_only: *read_only,
                })
                .collect(),
            net: self
                .nets
                .iter()
                .map(|(tap, mac)| NetConfig {
                    tap: tap.clone(),
                    mac: Some(mac.clone()),
                    no_offloads: false,
                })
                .collect(),
            vsock: Some(VsockConfig {
                cid: GUEST_CID,
                uds_path: self.vsock.clone(),
            }),
            fs: self
                .fs
                .iter()
                .map(|(tag, socket)| FsConfig::new(tag.clone(), socket.clone()))
                .collect(),
            free_page_reporting: self.free_page_reporting,
            serial: SerialOutput::File(self.console.clone()),
            serial_log: self.console_limits,
            control_socket: Some(self.control.clone()),
            exit_record: Some(self.exit_record.clone()),
            restore: self.restore.clone(),
            ..VmConfig::new(self.kernel.clone())
        })
    }
}

/// Starts the VMM in its own process group, with its output in a file: neither a
/// terminal's signals nor vmletd's exit reach it, so the pod outlives the daemon.
pub fn spawn(c: &VmmCommand) -> Result<tokio::process::Child, SandboxError> {
    let args = c.vm_config()?.to_args().map_err(SandboxError::VmmArgs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&c.log)
        .map_err(|source| SandboxError::Io {
            op: "open",
            path: c.log.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| SandboxError::Io {
        op: "dup",
        path: c.log.clone(),
        source,
    })?;
    let mut cmd = tokio::process::Command::new(&c.binary);
    cmd.args(args);
    if let Some(netns) = &c.netns {
        // Opened here (close-on-exec) and entered in the child before exec, so the
        // VMM opens its taps in the pod's namespace; vmletd's own stays untouched.
        let ns: std::os::fd::OwnedFd = std::fs::File::open(netns)
            .map_err(|source| SandboxError::Io {
                op: "open",
                path: netns.clone(),
                source,
            })?
            .into();
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // setns system call, which is async-signal-safe; `ns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }
    if let Some(procs) = &c.cgroup {
        join_cgroup(&mut cmd, procs)?;
    }
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn().map_err(|source| SandboxError::Io {
        op: "start",
        path: c.binary.clone(),
        source,
    })
}

/// Makes the child of `cmd` join the cgroup whose `cgroup.procs` is `procs` before
/// exec, so that nothing it does runs outside it.
pub fn join_cgroup(cmd: &mut tokio::process::Command, procs: &Path) -> Result<(), SandboxError> {
    let fd: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open(procs)
        .map_err(|source| SandboxError::Io {
            op: "open",
            path: procs.to_owned(),
            source,
        })?
        .into();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // write system call ("0": the writing process), which is async-signal-safe; `fd`
    // outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Whether `pid` is a live VMM serving `control` (its command line names the control
/// socket, which guards against a recycled pid).
pub fn alive(pid: u32, control: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name; Z = exited, not yet reaped.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    let want = control.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == want)
}

/// The pid of a live VMM serving `control`, found through /proc (for a VMM whose pid
/// was never recorded because the daemon died while starting it).
pub fn find(control: &Path) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| alive(pid, control))
}

/// Sends `signal` to `pid`; a process already gone is fine.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pid, "cannot send {signal} to the VMM: {e}");
        }
    }
}

/// Sends one control request and returns the VMM's answer; a refusal is an error.
pub async fn control(socket: &Path, request: &Request) -> Result<Response, SandboxError> {
    control_within(socket, request, CONTROL_TIMEOUT).await
}

/// [`control`] for a request that may take `timeout` (a snapshot writes guest memory).
pub async fn control_within(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, SandboxError> {
    let failed = |reason: String| SandboxError::Control {
        socket: socket.to_owned(),
        reason,
    };
    let protocol = |source| SandboxError::Protocol {
        socket: socket.to_owned(),
        cmd: request.name(),
        source,
    };
    let exchange = async {
        let mut line = request.encode().map_err(protocol)?;
        line.push('\n');
        let mut s = UnixStream::connect(socket)
            .await
            .map_err(|e| failed(format!("connect: {e}")))?;
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| failed(format!("write: {e}")))?;
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .await
            .map_err(|e| failed(format!("read: {e}")))?;
        Response::decode(request, reply.as_bytes()).map_err(protocol)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(failed(format!("no answer within {timeout:?}"))))
}

/// Sends one control request with `file` attached (`SCM_RIGHTS`), as `swap_drive`
/// takes it: a jailed VMM cannot open the host's files. Blocking: runs on the
/// blocking pool.
pub async fn control_with_file(
    socket: &Path,
    request: &Request,
    file: std::fs::File,
) -> Result<Response, SandboxError> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let failed = |socket: &Path, reason: String| SandboxError::Control {
        socket: socket.to_owned(),
        reason,
    };
    let mut line = request.encode().map_err(|source| SandboxError::Protocol {
        socket: socket.to_owned(),
        cmd: request.name(),
        source,
    })?;
    line.push('\n');
    let (path, req) = (socket.to_owned(), request.clone());
    let exchange = tokio::task::spawn_blocking(move || {
        let s = std::os::unix::net::UnixStream::connect(&path)
            .map_err(|e| failed(&path, format!("connect: {e}")))?;
        s.set_write_timeout(Some(CONTROL_TIMEOUT)).ok();
        s.set_read_timeout(Some(CONTROL_TIMEOUT)).ok();
        let fds = [file.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(line.as_bytes())];
        let sent = nix::sys::socket::sendmsg::<()>(
            s.as_raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| failed(&path, format!("send: {e}")))?;
        // The file went with the first bytes; the rest of a long line follows.
        (&s).write_all(&line.as_bytes()[sent..])
            .map_err(|e| failed(&path, format!("write: {e}")))?;
        let mut reply = String::new();
        std::io::BufReader::new(&s)
            .read_line(&mut reply)
            .map_err(|e| failed(&path, format!("read: {e}")))?;
        Response::decode(&req, reply.as_bytes()).map_err(|source| SandboxError::Protocol {
            socket: path.clone(),
            cmd: req.name(),
            source,
        })
    });
    match exchange.await {
        Ok(r) => r,
        Err(e) => Err(failed(socket, format!("interrupted: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_checks_the_command_line() {
        let me = std::process::id();
        assert!(!alive(me, Path::new("/no/such/control.sock")));
        assert!(!alive(u32::MAX - 1, Path::new("/x")));

        // A live process whose command line names the socket (as a VMM's does), and
        // that stays a child of the shell (`; true`: no exec into sleep).
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30; true")
            .arg("sh")
            .arg("--control-socket")
            .arg(&socket)
            .spawn()
            .unwrap();
        let pid = child.id();
        // Right after exec the new command line may not be readable yet.
        let start = std::time::Instant::now();
        while std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| c.is_empty()) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(alive(pid, &socket));
        assert_eq!(find(&socket), Some(pid));
        // Another socket, or a path that only starts like it, is not this VMM's.
        assert!(!alive(pid, &dir.path().join("other.sock")));
        assert!(!alive(pid, dir.path()));
        // Exited but not yet reaped (a zombie) is not alive.
        child.kill().unwrap();
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        };
        let start = std::time::Instant::now();
        while !zombie() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(pid, &socket));
        assert_eq!(find(&socket), None);
        child.wait().unwrap();
        assert!(!alive(pid, &socket));
    }

    fn command() -> VmmCommand {
        VmmCommand {
            binary: "/bin/vmlet-vmm".into(),
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            kernel_args: "quiet".into(),
            free_page_reporting: true,
            vcpus: 2,
            mem_mib: 256,
            drives: vec![
                ("scratch".into(), "/p/scratch.ext4".into(), false),
                ("slot0".into(), "/p/empty.img".into(), true),
            ],
            vsock: "/run/p/vsock".into(),
            control: "/run/p/ctl".into(),
            console: "/p/console.log".into(),
            console_limits: SerialLogLimits::default(),
            log: "/p/vmm.log".into(),
            exit_record: "/p/vmm-exit".into(),
            netns: None,
            nets: vec![("tap0".into(), "02:00:00:00:00:02".into())],
            fs: Vec::new(),
            jail: None,
            cgroup: None,
            restore: None,
            snapshot_dir: None,
        }
    }

    #[test]
    fn command_line_of_a_pod() {
        let args = command().vm_config().unwrap().to_args().unwrap();
        assert_eq!(
            args,
            [
                "--kernel=/k/vmlinux",
                "--initramfs=/k/initramfs.cpio",
                "--cmdline=quiet",
                "--vcpus=2",
                "--mem-mib=256",
                "--drive=id=scratch,path=/p/scratch.ext4",
                "--drive=id=slot0,path=/p/empty.img,ro",
                "--net=tap=tap0,mac=02:00:00:00:00:02",
                "--vsock=cid=3,uds=/run/p/vsock",
                "--free-page-reporting",
                "--serial=/p/console.log",
                "--control-socket",
                "/run/p/ctl",
                "--exit-record=/p/vmm-exit",
            ]
        );
        let mut c = command();
        c.vcpus = 300;
        assert!(matches!(c.vm_config(), Err(SandboxError::Vcpus(300))));
        c.vcpus = 1;
        c.drives[0].1 = "/odd,name".into();
        let e = spawn(&c).unwrap_err();
        assert!(e.to_string().contains("comma"), "{e}");
    }

    /// Serves one connection: reads one request line, answers `reply`, and returns
    /// the request line.
    fn serve_once(
        listener: tokio::net::UnixListener,
        reply: &'static str,
    ) -> tokio::task::JoinHandle<String> {
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            w.write_all(reply.as_bytes()).await.unwrap();
            line
        })
    }

    #[tokio::test]
    async fn control_sends_typed_versioned_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = serve_once(listener, "{\"ok\":true,\"sectors\":8}\n");
        let request = Request::SwapDrive {
            id: "slot0".into(),
            path: "/img".into(),
        };
        let reply = control(&path, &request).await.unwrap();
        assert_eq!(
            reply,
            Response::SwapDrive(vmlet_vmm_api::control::SwapDriveReply { sectors: 8 })
        );
        let sent = server.await.unwrap();
        assert_eq!(
            Request::decode(sent.trim_end().as_bytes()).unwrap(),
            request
        );
        assert!(sent.contains("\"version\":"), "{sent}");
    }

    #[tokio::test]
    async fn swap_requests_carry_the_opened_file() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::io::Write;
        use std::os::fd::{AsRawFd, FromRawFd, RawFd};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let img = dir.path().join("img");
        std::fs::write(&img, b"12345").unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let (n, fds) = {
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let msg =
                    recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
                        .unwrap();
                let fds: Vec<RawFd> = msg
                    .cmsgs()
                    .unwrap()
                    .flat_map(|c| match c {
                        ControlMessageOwned::ScmRights(f) => f,
                        _ => Vec::new(),
                    })
                    .collect();
                (msg.bytes, fds)
            };
            assert_eq!(fds.len(), 1);
            // SAFETY: recvmsg just gave us this descriptor.
            let file = unsafe { std::fs::File::from_raw_fd(fds[0]) };
            (&s).write_all(b"{\"ok\":true,\"sectors\":0}\n").unwrap();
            (
                String::from_utf8_lossy(&buf[..n]).into_owned(),
                file.metadata().unwrap().len(),
            )
        });
        let request = Request::SwapDrive {
            id: "slot0".into(),
            path: img.clone(),
        };
        let file = std::fs::File::open(&img).unwrap();
        let reply = control_with_file(&path, &request, file).await.unwrap();
        assert_eq!(
            reply,
            Response::SwapDrive(vmlet_vmm_api::control::SwapDriveReply { sectors: 0 })
        );
        let (line, len) = server.join().unwrap();
        assert!(line.contains("swap_drive"), "{line}");
        assert_eq!(len, 5);
        let e = control_with_file(
            &dir.path().join("none"),
            &request,
            std::fs::File::open(&img).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("connect"), "{e}");
    }

    #[tokio::test]
    async fn control_reports_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _server = serve_once(
            listener,
            "{\"ok\":false,\"error\":\"no drive with id \\\"x\\\"\"}\n",
        );
        let request = Request::SwapDrive {
            id: "x".into(),
            path: "/img".into(),
        };
        let e = control(&path, &request).await.unwrap_err();
        assert!(
            e.to_string().contains("swap_drive refused: no drive"),
            "{e}"
        );
        let e = control(&dir.path().join("none"), &Request::Status)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connect"), "{e}");
    }

    #[tokio::test]
    async fn control_refuses_another_protocol_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _server = serve_once(
            listener,
            "{\"ok\":true,\"version\":99,\"state\":\"running\",\"vcpus\":1,\"mem_mib\":128,\"drives\":[]}\n",
        );
        let e = control(&path, &Request::Status).await.unwrap_err();
        assert!(e.to_string().contains("version 99 is not supported"), "{e}");
    }
}
