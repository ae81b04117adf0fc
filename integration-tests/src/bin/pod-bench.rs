//! Pod start benchmark: N times RunPodSandbox + CreateContainer + StartContainer of a
//! busybox container until its first line is in its CRI log, then teardown, through
//! vmletd. Prints per-run lines, then `pod_start_ms_p50=` and `pod_start_ms_p99=`.
//! Used by `scripts/bench-pod.sh` (environment as for the integration tests).
//!
//! Usage: pod-bench [--runs N]

use std::time::{Duration, Instant};

use vmlet_agent::testing::{busybox_image, TestRegistry};
use vmlet_integration_tests::cri::{container_config, pod_config, Vmletd};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--runs N"),
        None => 10,
    };
    let registry = TestRegistry::start().expect("start the registry");
    let image = registry
        .push(&busybox_image().expect("busybox image"), "busybox:bench")
        .expect("push");
    let d = Vmletd::start(&["--insecure-registry", registry.addr()]);
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let mut times = Vec::new();
    for run in 0..runs {
        let name = format!("bench-{run}");
        let pod_cfg = pod_config(&name, &d.log_dir());
        let start = Instant::now();
        let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
        let id = c
            .create(
                &pod,
                container_config(&name, &image, "echo first-line; sleep 60"),
                &pod_cfg,
            )
            .expect("CreateContainer");
        c.start(&id).expect("StartContainer");
        let log = d.log_dir().join(format!("{name}.log"));
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" stdout F first-line")
        {
            assert!(start.elapsed() < Duration::from_secs(300), "no first line");
            std::thread::sleep(Duration::from_millis(2));
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        println!("run {run}: pod_start_ms={ms:.1}");
        times.push(ms);
        c.remove_pod(&pod).expect("RemovePodSandbox");
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("pod_start_ms_p50={:.1}", percentile(&times, 0.5));
    println!("pod_start_ms_p99={:.1}", percentile(&times, 0.99));
}
