//! Container start benchmark: boots one pod VM with the busybox image and a scratch
//! disk, then creates and starts a container N times and measures from the create
//! call to the container's first output line; also reports vmlet-init's own RSS.
//!
//! Usage: container-bench --kernel K --initramfs I [--runs N] [--vmm PATH]
//! Prints per-run lines, then `container_start_ms_p50=<n>`, `container_start_ms_p90=<n>`
//! and `init_rss_kib=<n>`.

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vmlet_integration_tests::agent::{req, CALL_TIMEOUT};
use vmlet_integration_tests::{drive, images, Guest, GuestConfig};
use vmlet_proto::agent as pb;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut runs = 30usize;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => std::env::set_var("VMLET_KERNEL", val()),
            "--initramfs" => std::env::set_var("VMLET_TEST_INITRAMFS", val()),
            "--vmm" => std::env::set_var("VMLET_VMM", val()),
            "--runs" => runs = val().parse().expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = images::busybox_erofs(dir.path());
    let scratch = images::scratch_disk(&dir.path().join("scratch.ext4"), 256);
    let mut guest = Guest::boot(GuestConfig {
        mem_mib: 256,
        drives: vec![
            drive("img0", &image, true),
            drive("scratch", &scratch, false),
        ],
        ..Default::default()
    });
    let agent = guest.agent();
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let id = format!("bench{i}");
        let spec = images::container_spec(&id, "img0", "scratch", &["/bin/echo", "hello"]);
        let start = Instant::now();
        agent.create(spec).expect("CreateContainer");
        agent.start(&id).expect("StartContainer");
        let out = agent.read_until(&id, "", pb::Stream::Stdout, Duration::from_secs(60), |d| {
            d.contains(&b'\n')
        });
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(out, b"hello\n");
        agent
            .wait(&id, "", Duration::from_secs(60))
            .expect("WaitProcess");
        agent.remove(&id, false).expect("RemoveContainer");
        // The first run warms caches (image mount, page cache); it is not counted.
        if i > 0 {
            println!("run {i}: container_start_ms={ms:.1}");
            times.push(ms);
        }
    }
    let mut c = agent.agent.clone();
    let stats = agent
        .call(
            CALL_TIMEOUT,
            c.stats(req(pb::StatsRequest::default(), CALL_TIMEOUT)),
        )
        .expect("Stats");
    let rss = stats.guest.map_or(0, |g| g.init_rss_bytes) / 1024;
    agent.shutdown().expect("Shutdown");
    guest.wait(Duration::from_secs(60));
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!("container_start_ms_p50={:.1}", pct(0.5));
    println!("container_start_ms_p90={:.1}", pct(0.9));
    println!("init_rss_kib={rss}");
}
