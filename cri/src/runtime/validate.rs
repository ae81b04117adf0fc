//! Checks shared by the RPC families: messages a person can act on.

use tonic::Status;

/// The ID field `what` of a request, which must be present.
pub fn id<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(value)
}

/// A resource quantity that must not be negative.
pub fn non_negative(value: i64, what: &str) -> Result<u64, Status> {
    u64::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("{what} must not be negative (got {value})")))
}

/// Now, as Unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        let e = id("", "pod_sandbox_id").unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "pod_sandbox_id is required")
        );
        assert_eq!(id("abc", "x").unwrap(), "abc");
        assert_eq!(non_negative(5, "x").unwrap(), 5);
        let e = non_negative(-1, "memory_limit_in_bytes").unwrap_err();
        assert!(e.message().contains("memory_limit_in_bytes"));
    }
}
