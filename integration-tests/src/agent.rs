//! A blocking client for vmlet-init's gRPC services, for tests: each call runs on a
//! private current-thread runtime and carries a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vmlet_proto::agent::{
    self as pb, agent_client::AgentClient, diagnostics_client::DiagnosticsClient,
};

/// Default deadline of one call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Connected clients of the guest's services.
pub struct GuestAgent {
    rt: tokio::runtime::Runtime,
    /// The `Agent` service.
    pub agent: AgentClient<Channel>,
    /// The `Diagnostics` service.
    pub diag: DiagnosticsClient<Channel>,
}

/// A request with a deadline.
pub fn req<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// All of one process's output.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// stdout (or the terminal).
    pub stdout: Vec<u8>,
    /// stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text.
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl GuestAgent {
    /// Connects through the VMM's hybrid-vsock socket.
    pub fn connect(vsock: &Path) -> Result<GuestAgent, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let channel = rt
            .block_on(vmlet_proto::hybrid::channel(
                vsock,
                vmlet_proto::AGENT_PORT,
                Duration::from_secs(30),
            ))
            .map_err(|e| e.to_string())?;
        Ok(GuestAgent {
            rt,
            agent: AgentClient::new(channel.clone())
                .max_decoding_message_size(32 << 20)
                .max_encoding_message_size(32 << 20),
            diag: DiagnosticsClient::new(channel)
                .max_decoding_message_size(32 << 20)
                .max_encoding_message_size(32 << 20),
        })
    }

    /// Runs a future on the client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Runs one call with a client-side limit a little beyond its deadline, so a guest
    /// that stops answering fails the test instead of hanging it.
    pub fn call<T>(
        &self,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let limit = timeout + Duration::from_secs(15);
        match self.block_on(async { tokio::time::timeout(limit, f).await }) {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from the guest within {timeout:?} (client-side limit)"
            ))),
        }
    }

    /// Health.
    pub fn health(&self) -> Result<pb::HealthResponse, Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.health(req(pb::HealthRequest {}, CALL_TIMEOUT)),
        )
    }

    /// Runs a shell command in the guest (not in a container).
    pub fn run(&self, script: &str) -> pb::RunCommandResponse {
        let mut c = self.diag.clone();
        self.call(
            CALL_TIMEOUT,
            c.run_command(req(
                pb::RunCommandRequest {
                    args: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    ..Default::default()
                },
                CALL_TIMEOUT,
            )),
        )
        .unwrap_or_else(|e| panic!("RunCommand {script:?}: {e}"))
    }

    /// Creates a container.
    pub fn create(&self, spec: pb::ContainerSpec) -> Result<u32, Status> {
        self.create_container(spec).map(|r| r.pid)
    }

    /// Creates a container; returns the whole answer (pid and resolved user).
    pub fn create_container(
        &self,
        spec: pb::ContainerSpec,
    ) -> Result<pb::CreateContainerResponse, Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.create_container(req(
                pb::CreateContainerRequest { spec: Some(spec) },
                CALL_TIMEOUT,
            )),
        )
    }

    /// Starts a container.
    pub fn start(&self, id: &str) -> Result<(), Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.start_container(req(
                pb::StartContainerRequest {
                    container_id: id.into(),
                },
                CALL_TIMEOUT,
            )),
        )
        .map(drop)
    }

    /// Waits for a process.
    pub fn wait(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<pb::ProcessStatus, Status> {
        crate::watchdog::step(format!("waiting for {id}/{exec_id} to exit"));
        let mut c = self.agent.clone();
        self.call(
            timeout,
            c.wait_process(req(
                pb::WaitProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                timeout,
            )),
        )
        .map(|r| r.status.unwrap_or_default())
    }

    /// Signals a process.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.signal_process(req(
                pb::SignalProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    signal,
                },
                CALL_TIMEOUT,
            )),
        )
        .map(drop)
    }

    /// Removes a container.
    pub fn remove(&self, id: &str, force: bool) -> Result<(), Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.remove_container(req(
                pb::RemoveContainerRequest {
                    container_id: id.into(),
                    force,
                },
                CALL_TIMEOUT,
            )),
        )
        .map(drop)
    }

    /// Writes to a process's stdin.
    pub fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<u32, Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.write_stdin(req(
                pb::WriteStdinRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    data: data.to_vec(),
                },
                CALL_TIMEOUT,
            )),
        )
        .map(|r| r.written)
    }

    /// Closes a process's stdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.close_stdin(req(
                pb::CloseStdinRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                CALL_TIMEOUT,
            )),
        )
        .map(drop)
    }

    /// One `ReadOutput` call.
    pub fn read(
        &self,
        id: &str,
        exec_id: &str,
        stream: pb::Stream,
        offset: u64,
        timeout: Duration,
    ) -> Result<pb::ReadOutputResponse, Status> {
        let mut c = self.agent.clone();
        self.call(
            timeout,
            c.read_output(req(
                pb::ReadOutputRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    stream: stream as i32,
                    offset,
                    max_bytes: 0,
                },
                timeout,
            )),
        )
    }

    /// Reads one stream from `offset` until `done` says the bytes so far are enough or
    /// the stream ends, at most `timeout`.
    pub fn read_until(
        &self,
        id: &str,
        exec_id: &str,
        stream: pb::Stream,
        timeout: Duration,
        done: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let start = Instant::now();
        let mut data = Vec::new();
        let mut offset = 0;
        crate::watchdog::step(format!("reading {stream:?} of {id}/{exec_id}"));
        while !done(&data) {
            let left = timeout.saturating_sub(start.elapsed());
            assert!(
                !left.is_zero(),
                "timed out reading {stream:?} of {id}/{exec_id}; so far: {:?}",
                String::from_utf8_lossy(&data)
            );
            let r = match self.read(
                id,
                exec_id,
                stream,
                offset,
                left.min(Duration::from_secs(10)),
            ) {
                Ok(r) => r,
                // One long poll that ran out (the guest answers shortly before the
                // deadline, and an emulated machine can be slower than that margin) is
                // no data yet; the whole read is bounded by `timeout` above.
                Err(e) if matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded) => continue,
                Err(e) => panic!("ReadOutput {id}/{exec_id}: {e}"),
            };
            data.extend_from_slice(&r.data);
            offset = r.offset + r.data.len() as u64;
            if r.eof {
                break;
            }
        }
        data
    }

    /// All output of a process, until both streams end.
    pub fn output(&self, id: &str, exec_id: &str, timeout: Duration) -> Output {
        Output {
            stdout: self.read_until(id, exec_id, pb::Stream::Stdout, timeout, |_| false),
            stderr: self.read_until(id, exec_id, pb::Stream::Stderr, timeout, |_| false),
        }
    }

    /// Starts an exec process.
    pub fn exec(&self, id: &str, exec_id: &str, process: pb::Process) -> Result<u32, Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.exec_process(req(
                pb::ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    process: Some(process),
                },
                CALL_TIMEOUT,
            )),
        )
        .map(|r| r.pid)
    }

    /// Asks the guest to stop its containers and power off.
    pub fn shutdown(&self) -> Result<(), Status> {
        let mut c = self.agent.clone();
        self.call(
            CALL_TIMEOUT,
            c.shutdown(req(
                pb::ShutdownRequest {
                    grace_period_seconds: 5,
                },
                CALL_TIMEOUT,
            )),
        )
        .map(drop)
    }
}
