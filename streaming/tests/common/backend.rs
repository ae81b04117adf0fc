//! A backend that runs host processes (exec, attach) and dials host ports
//! (port-forward): enough to drive the real Go clients without a VM.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::mpsc;
use vmlet_streaming::{
    AttachRequest, BackendError, ExecRequest, ExecStreams, ExitStatus, PortStream, StreamBackend,
    TerminalSize,
};

/// Runs `cmd` on the host; `attach` runs `cat` as the "main process".
pub struct HostBackend;

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(e.to_string())
}

fn status(s: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus {
        code: s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
    }
}

pub fn set_size(fd: &OwnedFd, s: TerminalSize) {
    let ws = libc::winsize {
        ws_row: s.height,
        ws_col: s.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

async fn copy_in(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

async fn run(cmd: Vec<String>, tty: bool, s: ExecStreams) -> Result<ExitStatus, BackendError> {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).kill_on_drop(true);
    if tty {
        return run_tty(c, s).await;
    }
    c.stdin(if s.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if s.stdout.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(if s.stderr.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().map_err(failed)?;
    let mut copies = tokio::task::JoinSet::new();
    if let (Some(from), Some(to)) = (s.stdin, child.stdin.take()) {
        // Not awaited: a client may keep stdin open after the command ends.
        tokio::spawn(copy_in(from, to));
    }
    if let (Some(from), Some(to)) = (child.stdout.take(), s.stdout) {
        copies.spawn(copy_in(from, to));
    }
    if let (Some(from), Some(to)) = (child.stderr.take(), s.stderr) {
        copies.spawn(copy_in(from, to));
    }
    let st = child.wait().await.map_err(failed)?;
    while copies.join_next().await.is_some() {}
    Ok(status(st))
}

async fn run_tty(mut c: Command, s: ExecStreams) -> Result<ExitStatus, BackendError> {
    let pty = nix::pty::openpty(None, None).map_err(failed)?;
    let mut resize = s.resize;
    // The client sends its size right after opening the session: wait a little for it
    // so the command starts with the right size, then apply any that queued up.
    if let Some(rx) = resize.as_mut() {
        if let Ok(Some(sz)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv()).await
        {
            set_size(&pty.master, sz);
        }
        while let Ok(sz) = rx.try_recv() {
            set_size(&pty.master, sz);
        }
    }
    let slave = pty.slave;
    c.stdin(Stdio::from(slave.try_clone().map_err(failed)?))
        .stdout(Stdio::from(slave.try_clone().map_err(failed)?))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(failed)?;
    drop(c);
    let master = pty.master;
    let reader =
        tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(failed)?));
    let writer =
        tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(failed)?));
    if let Some(from) = s.stdin {
        tokio::spawn(async move {
            let mut from = from;
            let mut to = writer;
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    break;
                }
            }
        });
    }
    let out = s.stdout.map(|to| {
        tokio::spawn(async move {
            let (mut from, mut to) = (reader, to);
            let mut buf = [0u8; 4096];
            // EIO once the last slave descriptor closes.
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to.shutdown().await;
        })
    });
    let sizes = resize.map(|mut rx: mpsc::Receiver<TerminalSize>| {
        tokio::spawn(async move {
            while let Some(sz) = rx.recv().await {
                set_size(&master, sz);
            }
        })
    });
    let st = child.wait().await.map_err(failed)?;
    if let Some(out) = out {
        let _ = out.await;
    }
    if let Some(t) = sizes {
        t.abort();
    }
    Ok(status(st))
}

impl StreamBackend for HostBackend {
    async fn exec(&self, req: ExecRequest, s: ExecStreams) -> Result<ExitStatus, BackendError> {
        run(req.cmd, req.tty, s).await
    }

    async fn attach(&self, req: AttachRequest, s: ExecStreams) -> Result<(), BackendError> {
        run(vec!["cat".into()], req.tty, s).await.map(|_| ())
    }

    async fn port_forward(
        &self,
        _pod: String,
        port: u16,
        mut s: PortStream,
    ) -> Result<(), BackendError> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(failed)?;
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut s).await;
        Ok(())
    }
}
