//! The host ⇄ guest control protocol (skeleton; gRPC replaces it later).
//!
//! The host connects to the guest's vsock port [`crate::server::VSOCK_PORT`] (1024, any CID).
//! Requests and responses are newline-delimited JSON: one request object per line, one
//! response line per request, in order. Every response has `"ok"`; a failed request answers
//! `{"ok":false,"error":"<message>"}` and the connection stays usable (a request line longer
//! than [`MAX_REQUEST_LINE`] bytes is skipped up to its newline and answered the same way).
//!
//! | request | response |
//! |---|---|
//! | `{"op":"ping"}` | `{"ok":true,"version":"<vmlet-init version>"}` |
//! | `{"op":"run","argv":["/bin/sh","-c","..."],"stdin":"<text>","timeout_ms":<n>}` | `{"ok":true,"status":<code>,"stdout":"...","stderr":"..."}` |
//! | `{"op":"echo"}` | `{"ok":true}`, then raw mode (below) |
//! | `{"op":"connect_echo","port":<p>}` | `{"ok":true,"bytes":<n>}` once the echo is over |
//! | `{"op":"poweroff"}` | `{"ok":true}`, then the VM powers off |
//!
//! - `run` executes `argv` (no shell unless asked; `PATH` defaults to
//!   [`crate::server::DEFAULT_PATH`]) in its own process group. `stdin` and `timeout_ms` are
//!   optional; without `stdin` the process reads `/dev/null`. `status` is the exit code, or
//!   128 + the signal number if a signal killed it. Output is returned as lossy UTF-8, at
//!   most [`MAX_OUTPUT`] bytes per stream (the rest is read and dropped). When `timeout_ms`
//!   passes, the whole process group gets `SIGKILL`, the response carries
//!   `"timed_out":true`, and whatever output arrived so far.
//! - `echo`: after its response line the connection is raw: every byte the guest reads is
//!   written back until EOF; then the guest closes. Hybrid vsock (a unix socket on the
//!   host) has no half-close: a host that closes its side ends the echo in both
//!   directions, so it should read back everything it sent before closing.
//! - `connect_echo`: the guest connects to the host (CID 2) on vsock port `p`, writes back
//!   every byte it reads there until EOF, closes that connection, then answers on the control
//!   connection with the number of bytes echoed. The echo is one read-then-write loop: the
//!   host must read while it writes, and (as for `echo`) read everything back before it
//!   closes.
//! - `poweroff`: the guest sends the response and shuts down its side of the connection,
//!   waits for the host to close the connection (at most 2 s: that is how it knows the
//!   response got out of the VM), then syncs and reboots, which with the kernel's
//!   `reboot=k` makes the VMM exit. The host should close the connection once it has
//!   read the response.
//!
//! Unknown fields are ignored; an unknown `op` or malformed JSON is an error response.

use serde::{Deserialize, Serialize};

/// Longest request line accepted, newline included.
pub const MAX_REQUEST_LINE: usize = 1 << 20;

/// Most bytes of each of stdout and stderr that `run` returns.
pub const MAX_OUTPUT: usize = 16 << 20;

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version check.
    Ping,
    /// Run a process to completion and collect its output.
    Run(RunRequest),
    /// Switch the connection to raw echo mode.
    Echo,
    /// Connect to the host and echo what it sends there.
    ConnectEcho {
        /// The host's vsock port.
        port: u32,
    },
    /// Answer, then power the VM off.
    Poweroff,
}

/// The arguments of [`Request::Run`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` if it has no slash.
    pub argv: Vec<String>,
    /// Text written to the process's standard input, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Kill the process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One response line. Only the fields of the answered request are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// `ping`: the version of vmlet-init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `run`: exit code, or 128 + signal number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    /// `run`: standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// `run`: standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// `run`: set when the timeout killed the process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// `connect_echo`: bytes echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Failed requests: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a finished `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// Standard output, lossy UTF-8.
    pub stdout: String,
    /// Standard error, lossy UTF-8.
    pub stderr: String,
    /// Whether the timeout killed the process group.
    pub timed_out: bool,
}

/// Why a request line could not be turned into a [`Request`].
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line held only whitespace.
    #[error("empty request")]
    Empty,
    /// The line exceeded [`MAX_REQUEST_LINE`].
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    TooLong,
    /// The line is not JSON, or not a known request.
    #[error("bad request: {0}")]
    Json(#[from] serde_json::Error),
}

/// Parses one request line (with or without its trailing newline).
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Err(ProtocolError::Empty);
    }
    Ok(serde_json::from_slice(line)?)
}

impl Response {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// The answer to `ping`.
    pub fn version(version: &str) -> Self {
        Self {
            version: Some(version.to_owned()),
            ..Self::ok()
        }
    }

    /// The answer to `run`.
    pub fn run(out: RunOutput) -> Self {
        Self {
            status: Some(out.status),
            stdout: Some(out.stdout),
            stderr: Some(out.stderr),
            timed_out: out.timed_out,
            ..Self::ok()
        }
    }

    /// The answer to `connect_echo`.
    pub fn bytes(bytes: u64) -> Self {
        Self {
            bytes: Some(bytes),
            ..Self::ok()
        }
    }

    /// A failed request.
    pub fn error(msg: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(msg.to_string()),
            ..Self::default()
        }
    }

    /// The response as one JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        match serde_json::to_vec(self) {
            Ok(mut line) => {
                line.push(b'\n');
                line
            }
            // Unreachable for this type (strings, numbers, bools), but never panic in PID 1.
            Err(_) => br#"{"ok":false,"error":"internal: cannot encode response"}
"#
            .to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Request {
        match parse_request(s.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(parse(r#"{"op":"ping"}"#), Request::Ping);
        assert_eq!(parse("{\"op\":\"echo\"}\r\n"), Request::Echo);
        assert_eq!(parse(r#" {"op":"poweroff"} "#), Request::Poweroff);
        assert_eq!(
            parse(r#"{"op":"connect_echo","port":5000}"#),
            Request::ConnectEcho { port: 5000 }
        );
        assert_eq!(
            parse(r#"{"op":"run","argv":["/bin/sh","-c","echo hi"]}"#),
            Request::Run(RunRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                stdin: None,
                timeout_ms: None,
            })
        );
        assert_eq!(
            parse(r#"{"argv":["cat"],"stdin":"x\ny","timeout_ms":50,"op":"run"}"#),
            Request::Run(RunRequest {
                argv: vec!["cat".into()],
                stdin: Some("x\ny".into()),
                timeout_ms: Some(50),
            })
        );
    }

    #[test]
    fn ignores_unknown_fields() {
        assert_eq!(parse(r#"{"op":"ping","id":7}"#), Request::Ping);
    }

    #[test]
    fn rejects_bad_requests() {
        for bad in [
            "",
            "  \n",
            "not json",
            "{",
            "[]",
            "null",
            r#"{"op":"reboot"}"#,
            r#"{"op":42}"#,
            r#"{"argv":["x"]}"#,
            r#"{"op":"run"}"#,
            r#"{"op":"run","argv":"ls"}"#,
            r#"{"op":"run","argv":["ls"],"timeout_ms":-1}"#,
            r#"{"op":"connect_echo"}"#,
            r#"{"op":"connect_echo","port":4294967296}"#,
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "accepted {bad:?}");
        }
        assert!(parse_request(b"\xff\xfe{}").is_err());
        assert!(matches!(parse_request(b" "), Err(ProtocolError::Empty)));
    }

    #[test]
    fn unknown_op_names_the_op() {
        let err = parse_request(br#"{"op":"reboot"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("reboot")));
    }

    #[test]
    fn responses_carry_only_their_fields() {
        let line = |r: Response| String::from_utf8_lossy(&r.to_line()).into_owned();
        assert_eq!(line(Response::ok()), "{\"ok\":true}\n");
        assert_eq!(
            line(Response::version("0.1.0")),
            "{\"ok\":true,\"version\":\"0.1.0\"}\n"
        );
        assert_eq!(line(Response::bytes(3)), "{\"ok\":true,\"bytes\":3}\n");
        assert_eq!(
            line(Response::error("bad \"x\"\n")),
            "{\"ok\":false,\"error\":\"bad \\\"x\\\"\\n\"}\n"
        );
        assert_eq!(
            line(Response::run(RunOutput {
                status: 1,
                stdout: "a".into(),
                stderr: String::new(),
                timed_out: false,
            })),
            "{\"ok\":true,\"status\":1,\"stdout\":\"a\",\"stderr\":\"\"}\n"
        );
        let timed_out = Response::run(RunOutput {
            status: 137,
            stdout: String::new(),
            stderr: String::new(),
            timed_out: true,
        });
        assert!(line(timed_out).contains("\"timed_out\":true"));
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::run(RunOutput {
            status: 130,
            stdout: "out".into(),
            stderr: "err".into(),
            timed_out: true,
        });
        let back: Response = serde_json::from_slice(&r.to_line()).unwrap_or_default();
        assert_eq!(back, r);
    }
}
