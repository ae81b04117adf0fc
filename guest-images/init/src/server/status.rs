//! Errors to gRPC statuses, and the deadline a client sent.

use std::time::Duration;

use tonic::{Code, Status};

use crate::container::rootfs::RootfsError;
use crate::container::spawn_error_is_child;
use crate::container::stdio::IoError;
use crate::container::Error;
use crate::guest::ConfigError;

/// The gRPC status for a container error.
pub fn container(e: Error) -> Status {
    let code = match &e {
        Error::Spec(_) | Error::Limit(_) => Code::InvalidArgument,
        Error::NotFound { .. } => Code::NotFound,
        Error::Exists { .. } => Code::AlreadyExists,
        Error::State(_) => Code::FailedPrecondition,
        Error::TooMany => Code::ResourceExhausted,
        Error::Rootfs(RootfsError::NoDevice(_) | RootfsError::NoSubdir(_)) => Code::NotFound,
        Error::Spawn(s) if spawn_error_is_child(s) => Code::FailedPrecondition,
        Error::Io(IoError::StdinClosed | IoError::NoTty) => Code::FailedPrecondition,
        Error::Timeout(_) => Code::DeadlineExceeded,
        Error::Rootfs(_)
        | Error::Cgroup(_)
        | Error::Devices(_)
        | Error::Stdio(_)
        | Error::Spawn(_)
        | Error::Io(_)
        | Error::Sys { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The gRPC status for a volume error.
pub fn volume(e: crate::guest::volumes::VolumeError) -> Status {
    use crate::guest::volumes::VolumeError as V;
    let code = match &e {
        V::Invalid(_) => Code::InvalidArgument,
        V::NotFound(_) => Code::NotFound,
        V::Exists(_) => Code::AlreadyExists,
        V::Sys { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The gRPC status for a guest configuration error.
pub fn config(e: ConfigError) -> Status {
    let code = match &e {
        ConfigError::Invalid(_) | ConfigError::Path(_) => Code::InvalidArgument,
        ConfigError::Net(crate::guest::netconf::NetconfError::NoSuchInterface { .. }) => {
            Code::NotFound
        }
        ConfigError::Net(n) if is_bad_input(n) => Code::InvalidArgument,
        ConfigError::Net(_) | ConfigError::Sys { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The gRPC status for a failed `Restored` call.
pub fn restore(e: crate::guest::restore::RestoreError) -> Status {
    use crate::guest::restore::RestoreError as R;
    let code = match &e {
        R::Invalid(_) => Code::InvalidArgument,
        R::Sys { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

fn is_bad_input(e: &crate::guest::netconf::NetconfError) -> bool {
    use crate::guest::netconf::NetconfError as N;
    matches!(
        e,
        N::BadCidr { .. }
            | N::BadMac { .. }
            | N::BadName { .. }
            | N::RouteWithoutNextHop { .. }
            | N::GatewayFamilyMismatch { .. }
            | N::DuplicateMac { .. }
    )
}

/// The time left before the client's deadline (`grpc-timeout`), if it sent one.
pub fn deadline<T>(req: &tonic::Request<T>) -> Option<Duration> {
    let value = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_timeout(value)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("S"), None);
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout("123456789S"), None);
    }
}
