//! `Exec`, `Attach` and `PortForward`: checked here as kubelet's reference streaming
//! server checks them, then answered with a URL from the daemon's streaming server
//! (a [`StreamUrls`]), which serves the session itself.

use tonic::Status;

use super::backend::{ContainerInfo, ContainerState, PodInfo, PodState};
use crate::image::BackendError;
use crate::proto;

/// Most ports one `PortForward` request may name.
pub const MAX_PORTS: usize = 128;

/// An `Exec` session to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSession {
    /// The container.
    pub container_id: String,
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// In a terminal.
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// An `Attach` session to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSession {
    /// The container.
    pub container_id: String,
    /// The container has a terminal.
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// A `PortForward` session to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardSession {
    /// The pod.
    pub pod_sandbox_id: String,
    /// The request's ports.
    pub ports: Vec<u16>,
}

/// The daemon's streaming server, as the RuntimeService sees it: a URL for each
/// checked request.
pub trait StreamUrls: Send + Sync + 'static {
    /// The URL of an exec session.
    fn exec_url(&self, s: ExecSession) -> Result<String, BackendError>;
    /// The URL of an attach session.
    fn attach_url(&self, s: AttachSession) -> Result<String, BackendError>;
    /// The URL of a port-forward session.
    fn port_forward_url(&self, s: PortForwardSession) -> Result<String, BackendError>;
}

fn streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

fn running(c: &ContainerInfo, what: &str) -> Result<(), Status> {
    if c.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is {:?}: {what} needs a running container",
            c.id, c.state
        )));
    }
    Ok(())
}

/// Checks an `Exec` request against its container (as looked up by the server).
pub fn exec(req: proto::ExecRequest, c: &ContainerInfo) -> Result<ExecSession, Status> {
    if req.cmd.first().is_none_or(|a| a.is_empty()) {
        return Err(Status::invalid_argument("cmd is required"));
    }
    streams(req.tty, req.stdin, req.stdout, req.stderr)?;
    running(c, "exec")?;
    Ok(ExecSession {
        container_id: c.id.clone(),
        cmd: req.cmd,
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    })
}

/// Checks an `Attach` request against its container.
pub fn attach(req: proto::AttachRequest, c: &ContainerInfo) -> Result<AttachSession, Status> {
    streams(req.tty, req.stdin, req.stdout, req.stderr)?;
    running(c, "attach")?;
    Ok(AttachSession {
        container_id: c.id.clone(),
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    })
}

/// Checks a `PortForward` request against its pod.
pub fn port_forward(
    req: proto::PortForwardRequest,
    pod: &PodInfo,
) -> Result<PortForwardSession, Status> {
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready: port-forward needs a running pod",
            pod.id
        )));
    }
    if req.port.len() > MAX_PORTS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_PORTS} ports per request (got {})",
            req.port.len()
        )));
    }
    let ports = req
        .port
        .iter()
        .map(|&p| {
            u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| Status::invalid_argument(format!("port {p} is not 1..=65535")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PortForwardSession {
        pod_sandbox_id: pod.id.clone(),
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn container(state: ContainerState) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            pod_id: "p1".into(),
            config: Default::default(),
            image_id: String::new(),
            state,
            created_at_ns: 0,
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: String::new(),
            verbose_json: String::new(),
            user: None,
        }
    }

    fn pod(state: PodState) -> PodInfo {
        PodInfo {
            id: "p1".into(),
            config: Default::default(),
            state,
            created_at_ns: 0,
            verbose_json: String::new(),
            ips: Vec::new(),
        }
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> (Code, String) {
        let e = r.unwrap_err();
        (e.code(), e.message().to_owned())
    }

    #[test]
    fn exec_checks() {
        let running = container(ContainerState::Running);
        let req = proto::ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["echo".into(), "hello".into()],
            stdout: true,
            ..Default::default()
        };
        let s = exec(req.clone(), &running).unwrap();
        assert_eq!(s.cmd, ["echo", "hello"]);
        assert!(s.stdout && !s.stdin && !s.tty);
        let mut bad = req.clone();
        bad.cmd.clear();
        assert_eq!(
            code(exec(bad, &running)),
            (Code::InvalidArgument, "cmd is required".into())
        );
        let mut bad = req.clone();
        bad.tty = true;
        bad.stderr = true;
        assert_eq!(
            code(exec(bad, &running)),
            (
                Code::InvalidArgument,
                "tty and stderr cannot both be true".into()
            )
        );
        let mut bad = req.clone();
        bad.stdout = false;
        assert_eq!(
            code(exec(bad, &running)).1,
            "one of stdin, stdout, or stderr must be set"
        );
        let (c, m) = code(exec(req, &container(ContainerState::Exited)));
        assert_eq!(c, Code::FailedPrecondition);
        assert!(m.contains("Exited"), "{m}");
    }

    #[test]
    fn attach_checks() {
        let req = proto::AttachRequest {
            container_id: "c1".into(),
            stdin: true,
            ..Default::default()
        };
        let s = attach(req.clone(), &container(ContainerState::Running)).unwrap();
        assert!(s.stdin);
        assert_eq!(
            code(attach(req, &container(ContainerState::Created))).0,
            Code::FailedPrecondition
        );
    }

    #[test]
    fn port_forward_checks() {
        let req = proto::PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![80, 8080],
        };
        let s = port_forward(req.clone(), &pod(PodState::Ready)).unwrap();
        assert_eq!(s.ports, [80, 8080]);
        assert_eq!(
            code(port_forward(req, &pod(PodState::NotReady))).0,
            Code::FailedPrecondition
        );
        for p in [0, 65536, -1] {
            let req = proto::PortForwardRequest {
                pod_sandbox_id: "p1".into(),
                port: vec![p],
            };
            assert_eq!(
                code(port_forward(req, &pod(PodState::Ready))).0,
                Code::InvalidArgument
            );
        }
    }
}
