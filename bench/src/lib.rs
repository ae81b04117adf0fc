//! Helpers the benchmark binaries share.

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vmlet_integration_tests::JsonLines;
use vmlet_vmm_api::control::{CountersReply, Request, Response};

/// The number after flag `name` in `args`, or `default` without the flag.
pub fn arg(args: &[String], name: &str, default: usize) -> usize {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} wants a number")),
        None => default,
    }
}

/// The middle value of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A VMM's counters, through its control socket `control`.
pub fn counters(control: &Path) -> CountersReply {
    let s = UnixStream::connect(control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = Request::Counters;
    let line = JsonLines::new(s).exchange(&req.encode().unwrap());
    match Response::decode(&req, line.as_bytes()).unwrap() {
        Response::Counters(c) => c,
        other => panic!("counters: {other:?}"),
    }
}
