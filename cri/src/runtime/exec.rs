//! `ExecSync`: runs a command in a container to completion.

use std::time::Duration;

use tonic::Status;

use super::backend::ExecOutput;
use super::validate;
use crate::proto;

/// Most output kept per stream, as the CRI asks (CVE-2022-1708): the rest is dropped
/// and the command goes on.
pub const OUTPUT_CAP: usize = 16 << 20;

/// The command and timeout of a request.
pub fn request(req: &proto::ExecSyncRequest) -> Result<(Vec<String>, Option<Duration>), Status> {
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(Status::invalid_argument("cmd is required"));
    }
    let timeout = match validate::timeout_secs(req.timeout, "timeout")? {
        t if t.is_zero() => None,
        t => Some(t),
    };
    Ok((req.cmd.clone(), timeout))
}

/// The response, with each stream capped.
pub fn response(mut out: ExecOutput) -> proto::ExecSyncResponse {
    out.stdout.truncate(OUTPUT_CAP);
    out.stderr.truncate(OUTPUT_CAP);
    proto::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let mut r = proto::ExecSyncRequest::default();
        let e = request(&r).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "cmd is required")
        );
        r.cmd = vec!["true".into()];
        r.timeout = 3;
        assert_eq!(request(&r).unwrap().1, Some(Duration::from_secs(3)));
        r.timeout = -1;
        let e = request(&r).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::InvalidArgument,
                "timeout must be between 0 and 315360000 seconds (got -1)"
            )
        );
        r.timeout = 400_000_000_000;
        assert_eq!(
            request(&r).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let big = response(ExecOutput {
            stdout: vec![0; OUTPUT_CAP + 5],
            ..Default::default()
        });
        assert_eq!(big.stdout.len(), OUTPUT_CAP);
    }
}
