//! ExecSync: a process in a running container, its whole output, its exit code.

use std::sync::Arc;
use std::time::Duration;

use vmlet_cri::runtime::{ContainerState, ExecOutput};
use vmlet_proto::agent as pb;

use super::error::RuntimeError;
use super::state::Inner;
use super::util::{lock, new_id};
use crate::logs;
use crate::sandbox::{guest, GuestClient};

/// Output kept per stream (the CRI caps ExecSync output at 16 MiB); the rest is read
/// and dropped so the process never blocks.
const CAP: usize = 16 << 20;
/// Deadline of one ReadOutput poll.
const POLL: Duration = Duration::from_secs(30);

/// Bytes asked for per read.
const READ_BYTES: u32 = 1 << 20;

/// Reads a process's stream to its end.
async fn read_all(
    client: GuestClient,
    id: String,
    exec_id: String,
    stream: pb::Stream,
) -> Result<Vec<u8>, tonic::Status> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut empty_pause = logs::EMPTY_FIRST;
    loop {
        let mut c = client.clone();
        let r = c
            .read_output(guest::req(
                pb::ReadOutputRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    stream: stream as i32,
                    offset,
                    max_bytes: READ_BYTES,
                },
                POLL,
            ))
            .await;
        let r = match r {
            Ok(r) => logs::checked(r.into_inner(), offset, READ_BYTES).map_err(|why| {
                tonic::Status::internal(format!("the guest's output reply is refused: {why}"))
            })?,
            Err(s) if guest::deadline_passed(&s) => continue,
            Err(s) => return Err(s),
        };
        if r.data.is_empty() && !r.eof {
            tokio::time::sleep(empty_pause).await;
            empty_pause = (empty_pause * 2).min(logs::EMPTY_MAX);
            continue;
        }
        empty_pause = logs::EMPTY_FIRST;
        let room = CAP.saturating_sub(out.len());
        out.extend_from_slice(&r.data[..r.data.len().min(room)]);
        offset = r.offset + r.data.len() as u64;
        if r.eof {
            return Ok(out);
        }
    }
}

async fn run(client: GuestClient, id: String, exec_id: String) -> Result<ExecOutput, RuntimeError> {
    let out = read_all(
        client.clone(),
        id.clone(),
        exec_id.clone(),
        pb::Stream::Stdout,
    );
    let err = read_all(
        client.clone(),
        id.clone(),
        exec_id.clone(),
        pb::Stream::Stderr,
    );
    let (stdout, stderr) = tokio::try_join!(out, err).map_err(RuntimeError::guest("ReadOutput"))?;
    loop {
        let mut c = client.clone();
        match c
            .wait_process(guest::req(
                pb::WaitProcessRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                },
                POLL,
            ))
            .await
        {
            Ok(r) => {
                let s = r.into_inner().status.unwrap_or_default();
                return Ok(ExecOutput {
                    stdout,
                    stderr,
                    exit_code: s.exit_code,
                });
            }
            Err(s) if guest::deadline_passed(&s) => continue,
            Err(s) => return Err(RuntimeError::guest("WaitProcess")(s)),
        }
    }
}

/// The guest client of running container `id`, and the process `cmd` runs as in it
/// (the main process's environment, working directory and user).
pub(super) fn target(
    inner: &Arc<Inner>,
    id: &str,
    cmd: Vec<String>,
) -> Result<(GuestClient, pb::Process), RuntimeError> {
    let c = inner.container(id)?;
    let (state, p) = {
        let r = lock(&c.record);
        (r.state, r.process.clone())
    };
    if state != ContainerState::Running {
        return Err(RuntimeError::Precondition(format!(
            "container {id} is {state:?}: exec needs a running container"
        )));
    }
    let vm = c.pod.vm().filter(|v| v.running()).ok_or_else(|| {
        RuntimeError::Precondition(format!("the VM of container {id} is not running"))
    })?;
    let process = pb::Process {
        args: cmd,
        env: p.env,
        cwd: p.cwd,
        // The identity, capabilities and filter the container's process got.
        user: Some(pb::User {
            uid: p.uid,
            gid: p.gid,
            additional_gids: p.additional_gids,
            gid_set: true,
            ..Default::default()
        }),
        no_new_privileges: p.no_new_privs,
        capabilities: p.capabilities.as_ref().map(|c| c.to_guest()),
        seccomp_filter: p.seccomp_filter,
        ..Default::default()
    };
    Ok((vm.client.clone(), process))
}

/// A fresh exec id.
pub(super) fn exec_id() -> Result<String, RuntimeError> {
    Ok(format!("exec-{}", &new_id()?[..16]))
}

/// Runs `cmd` in container `id` to completion.
pub async fn exec_sync(
    inner: &Arc<Inner>,
    id: &str,
    cmd: Vec<String>,
    timeout: Option<Duration>,
) -> Result<ExecOutput, RuntimeError> {
    let (client, process) = target(inner, id, cmd)?;
    let exec_id = exec_id()?;
    client
        .clone()
        .exec_process(guest::req(
            pb::ExecProcessRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.clone(),
                process: Some(process),
            },
            guest::CALL,
        ))
        .await
        .map_err(RuntimeError::guest("ExecProcess"))?;
    let work = run(client.clone(), id.to_owned(), exec_id.clone());
    let Some(limit) = timeout else {
        return work.await;
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => {
            // Kill it and reap it, so the guest forgets the process.
            let mut client = client.clone();
            let _ = client
                .signal_process(guest::req(
                    pb::SignalProcessRequest {
                        container_id: id.to_owned(),
                        exec_id: exec_id.clone(),
                        signal: libc::SIGKILL as u32,
                    },
                    guest::CALL,
                ))
                .await;
            let _ = client
                .wait_process(guest::req(
                    pb::WaitProcessRequest {
                        container_id: id.to_owned(),
                        exec_id,
                    },
                    guest::CALL,
                ))
                .await;
            Err(RuntimeError::Timeout(format!(
                "command timed out after {limit:?} and was killed"
            )))
        }
    }
}
