//! The `run` request: start a process, feed it stdin, collect its output and status.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::console;
use crate::pid1::reaper::{ChildRegistry, SpawnedChild, WaitError};
use crate::protocol::{RunOutput, RunRequest, MAX_OUTPUT};

/// `PATH` given to processes when vmlet-init itself has none (the kernel starts init
/// without one).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long output may keep arriving after a timed-out process group was killed (a process
/// that left the group can hold the pipes open forever).
const KILL_GRACE: Duration = Duration::from_millis(500);

/// Why a `run` request failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `argv` was empty.
    #[error("argv is empty")]
    EmptyArgv,
    /// The process could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exit status could not be collected.
    #[error("cannot wait for the process: {0}")]
    Wait(#[from] WaitError),
}

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Runs `req` to completion (or to its timeout) as a registered child of `children`.
pub fn run(children: &ChildRegistry, req: &RunRequest) -> Result<RunOutput, RunError> {
    let (program, args) = req.argv.split_first().ok_or(RunError::EmptyArgv)?;
    // An absurd timeout overflows Instant: treat it as none.
    let deadline = req
        .timeout_ms
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));

    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let SpawnedChild {
        pid,
        stdin,
        stdout,
        stderr,
    } = children.spawn(&mut cmd).map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;

    let (done_tx, done_rx) = mpsc::channel();
    let (out, out_started) = collect(stdout, done_tx.clone());
    let (err, err_started) = collect(stderr, done_tx);
    if let (Some(mut pipe), Some(text)) = (stdin, req.stdin.clone()) {
        let spawned = std::thread::Builder::new()
            .name("run-stdin".into())
            // A process that exits without reading makes this fail with EPIPE: fine.
            .spawn(move || drop(pipe.write_all(text.as_bytes())));
        if let Err(e) = spawned {
            // The pipe is closed with the closure: the process sees EOF.
            console::error(format_args!("run: cannot start the stdin thread: {e}"));
        }
    }

    // Output first: the pipes close when the process (and whatever inherited them) exits.
    let pending = wait_done(
        &done_rx,
        usize::from(out_started) + usize::from(err_started),
        deadline,
    );
    let waited = if pending == 0 {
        children.wait(pid, deadline)
    } else {
        Err(WaitError::TimedOut)
    };
    let (status, timed_out) = match waited {
        Ok(status) => (status, false),
        Err(WaitError::TimedOut) => {
            if let Err(e) = children.kill_group(pid, Signal::SIGKILL) {
                console::error(format_args!("run: cannot kill process group {pid}: {e}"));
            }
            let status = children.wait(pid, None)?;
            wait_done(&done_rx, pending, Instant::now().checked_add(KILL_GRACE));
            (status, true)
        }
        Err(e) => return Err(e.into()),
    };
    Ok(RunOutput {
        status,
        stdout: take_lossy(&out),
        stderr: take_lossy(&err),
        timed_out,
    })
}

/// Starts a thread that reads `pipe` to EOF into the returned buffer (keeping at most
/// [`MAX_OUTPUT`] bytes) and then signals `done`. The flag says whether it started.
fn collect<R: Read + Send + 'static>(pipe: Option<R>, done: Sender<()>) -> (Buffer, bool) {
    let buffer = Buffer::default();
    let Some(mut pipe) = pipe else {
        return (buffer, false);
    };
    let shared = Arc::clone(&buffer);
    let spawned = std::thread::Builder::new()
        .name("run-output".into())
        .spawn(move || {
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut buf = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        let room = MAX_OUTPUT.saturating_sub(buf.len()).min(n);
                        buf.extend_from_slice(&chunk[..room]);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => (buffer, true),
        Err(e) => {
            console::error(format_args!("run: cannot start an output thread: {e}"));
            (buffer, false)
        }
    }
}

/// Waits for `pending` done signals or the deadline; returns how many are still pending.
fn wait_done(done: &Receiver<()>, mut pending: usize, deadline: Option<Instant>) -> usize {
    while pending > 0 {
        let got = match deadline {
            None => done.recv().is_ok(),
            Some(deadline) => done
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok(),
        };
        if !got {
            break;
        }
        pending -= 1;
    }
    pending
}

fn take_lossy(buffer: &Buffer) -> String {
    let buf = buffer.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&buf).into_owned()
}
