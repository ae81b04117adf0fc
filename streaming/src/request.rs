//! The CRI requests a streaming URL stands for, and the checks the CRI asks for
//! before a URL is handed out.

/// Most ports in one port-forward session: two channels each, numbered in one byte.
pub const MAX_PORTS: usize = 127;

/// A CRI `Exec` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The container to run in.
    pub container_id: String,
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// Run in a terminal (stdout and stderr merged).
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr (never with `tty`).
    pub stderr: bool,
}

/// A CRI `Attach` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The container to attach to.
    pub container_id: String,
    /// The container runs in a terminal.
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr (never with `tty`).
    pub stderr: bool,
}

/// A CRI `PortForward` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// The pod whose ports are forwarded.
    pub pod_sandbox_id: String,
    /// The request's ports. Only the WebSocket channel protocol uses them; SPDY
    /// clients name the port of each connection themselves.
    pub ports: Vec<u16>,
}

/// A request that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// No container id.
    #[error("container_id is required")]
    NoContainer,
    /// No pod id.
    #[error("pod_sandbox_id is required")]
    NoPod,
    /// Exec without a command.
    #[error("cmd is required")]
    NoCommand,
    /// `tty` and `stderr` both set.
    #[error("tty and stderr cannot both be true")]
    TtyWithStderr,
    /// None of stdin, stdout and stderr.
    #[error("one of stdin, stdout, or stderr must be set")]
    NoStreams,
    /// A port of 0, or more ports than one session can carry.
    #[error("bad ports {0:?}: each must be 1-65535, at most {max} of them", max = MAX_PORTS)]
    BadPorts(Vec<u16>),
    /// Too many URLs handed out and not used yet.
    #[error("too many pending streaming requests (limit {0})")]
    TooManyPending(usize),
    /// The system's random source failed.
    #[error("cannot make a token: {0}")]
    Random(String),
}

fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), RequestError> {
    if tty && stderr {
        return Err(RequestError::TtyWithStderr);
    }
    if !(stdin || stdout || stderr) {
        return Err(RequestError::NoStreams);
    }
    Ok(())
}

impl ExecRequest {
    /// The CRI's checks.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.container_id.is_empty() {
            return Err(RequestError::NoContainer);
        }
        if self.cmd.first().is_none_or(|c| c.is_empty()) {
            return Err(RequestError::NoCommand);
        }
        check_streams(self.tty, self.stdin, self.stdout, self.stderr)
    }
}

impl AttachRequest {
    /// The CRI's checks.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.container_id.is_empty() {
            return Err(RequestError::NoContainer);
        }
        check_streams(self.tty, self.stdin, self.stdout, self.stderr)
    }
}

impl PortForwardRequest {
    /// The CRI's checks.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.pod_sandbox_id.is_empty() {
            return Err(RequestError::NoPod);
        }
        if self.ports.contains(&0) || self.ports.len() > MAX_PORTS {
            return Err(RequestError::BadPorts(self.ports.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let mut e = ExecRequest {
            container_id: "c".into(),
            cmd: vec!["ls".into()],
            tty: true,
            stdin: false,
            stdout: true,
            stderr: false,
        };
        assert_eq!(e.validate(), Ok(()));
        e.stderr = true;
        assert_eq!(e.validate(), Err(RequestError::TtyWithStderr));
        e.tty = false;
        e.cmd.clear();
        assert_eq!(e.validate(), Err(RequestError::NoCommand));
        let a = AttachRequest {
            container_id: "c".into(),
            tty: false,
            stdin: false,
            stdout: false,
            stderr: false,
        };
        assert_eq!(a.validate(), Err(RequestError::NoStreams));
        let mut p = PortForwardRequest {
            pod_sandbox_id: String::new(),
            ports: vec![],
        };
        assert_eq!(p.validate(), Err(RequestError::NoPod));
        p.pod_sandbox_id = "p".into();
        p.ports = vec![80, 0];
        assert_eq!(p.validate(), Err(RequestError::BadPorts(vec![80, 0])));
    }
}
