//! Checks shared by the RPC families: messages a person can act on.

use std::time::Duration;

use tonic::metadata::MetadataMap;
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

/// Longest timeout a request may ask for, in seconds (ten years): far beyond any
/// grace period, and far below what timers and gRPC deadlines can represent (a gRPC
/// timeout header holds at most 99,999,999 hours; larger ones make client libraries
/// panic).
pub const MAX_TIMEOUT_SECS: i64 = 10 * 365 * 24 * 3600;

/// A timeout in seconds from the caller: not negative, at most [`MAX_TIMEOUT_SECS`].
pub fn timeout_secs(value: i64, what: &str) -> Result<Duration, Status> {
    if !(0..=MAX_TIMEOUT_SECS).contains(&value) {
        return Err(Status::invalid_argument(format!(
            "{what} must be between 0 and {MAX_TIMEOUT_SECS} seconds (got {value})"
        )));
    }
    Ok(Duration::from_secs(value.unsigned_abs()))
}

/// Whether `name` is a DNS label, as Kubernetes names RuntimeClass handlers: 1 to 63
/// of `a-z`, `0-9` and `-`, not starting or ending with `-`.
pub fn is_handler_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A RuntimeClass handler name from RunPodSandbox: "" (the default) or a DNS label.
/// Whether the runtime has it is the backend's question.
pub fn runtime_handler(name: String) -> Result<String, Status> {
    if !(name.is_empty() || is_handler_name(&name)) {
        let shown: String = name.chars().take(80).collect();
        return Err(Status::invalid_argument(format!(
            "runtime_handler {shown:?} is not a RuntimeClass handler name (a DNS label: \
             at most 63 of a-z, 0-9 and '-')"
        )));
    }
    Ok(name)
}

/// Now, as Unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The caller's deadline, from the `grpc-timeout` request header (gRPC over HTTP/2:
/// at most 8 digits and a unit, `H` `M` `S` `m` `u` `n`); `None` when the caller set
/// none or sent one that does not parse.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
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
    fn runtime_handlers_are_dns_labels() {
        for ok in ["", "vmlet", "big-vm2", &"a".repeat(63)] {
            assert_eq!(runtime_handler(ok.to_owned()).unwrap(), ok);
        }
        for bad in ["Big", "-a", "a-", "a_b", "a.b", &"a".repeat(64), "é"] {
            let e = runtime_handler(bad.to_owned()).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn grpc_timeouts_parse() {
        let of = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(of("300S"), Some(Duration::from_secs(300)));
        assert_eq!(of("2M"), Some(Duration::from_secs(120)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(of("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(of(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

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

    #[test]
    fn timeouts_are_range_checked() {
        assert_eq!(timeout_secs(0, "t").unwrap(), Duration::ZERO);
        assert_eq!(timeout_secs(30, "t").unwrap(), Duration::from_secs(30));
        assert!(timeout_secs(MAX_TIMEOUT_SECS, "t").is_ok());
        for bad in [
            -1,
            MAX_TIMEOUT_SECS + 1,
            400_000_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            let e = timeout_secs(bad, "timeout").unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains(&bad.to_string()), "{}", e.message());
        }
        // Whatever passes can become a gRPC deadline without a panic.
        let mut r = tonic::Request::new(());
        r.set_timeout(timeout_secs(MAX_TIMEOUT_SECS, "t").unwrap());
    }
}
