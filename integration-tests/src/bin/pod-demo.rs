//! The main demo: starts vmletd, builds a busybox image and pushes it to a registry on
//! loopback, pulls it through the CRI, runs a pod (a micro-VM) whose container prints
//! a line, shows that line from the container's CRI log file, runs `kubectl exec` in
//! a second container (real kubectl through a fake API server that asks vmletd's CRI
//! `Exec` for the session URL, as kubelet does), and removes the pod.
//! Used by `scripts/demo.sh` (environment as for the integration tests).
//!
//! Usage: pod-demo [LINE]

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vmlet_integration_tests::cri::{container_config, parse_log, pod_config, Vmletd};
use vmlet_integration_tests::kubectl::{cri_urls, FakeApiServer, Transport};
use vmlet_test_support::{busybox_image, TestRegistry};

fn main() {
    let line = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "hello from a container in a vmlet micro-VM".to_owned());
    let start = Instant::now();
    let registry = TestRegistry::start().expect("start a registry on loopback");
    let image = registry
        .push(
            &busybox_image().expect("build the busybox image"),
            "demo/busybox:1",
        )
        .expect("push the image");
    eprintln!("demo: pushed {image}");
    let d = Vmletd::start(&["--insecure-registry", registry.addr()]);
    let c = d.client();
    let id = c.pull(&image).expect("PullImage");
    eprintln!("demo: vmletd pulled {image} as {id}");
    let pod_cfg = pod_config("demo", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    eprintln!(
        "demo: pod {} is a micro-VM ({:.1?})",
        &pod[..12],
        start.elapsed()
    );
    // Shell built-ins only: the image has a handful of busybox applets.
    let script = format!(
        "echo \"{line}\"; read -r _ _ v _ < /proc/version; echo \"guest kernel $v, hostname $HOSTNAME\""
    );
    let ctr = c
        .create(&pod, container_config("hello", &image, &script), &pod_cfg)
        .expect("CreateContainer");
    c.start(&ctr).expect("StartContainer");
    let status = c.wait_exited(&ctr, Duration::from_secs(120));
    let log_path = d.log_dir().join("hello.log");
    let text = std::fs::read_to_string(&log_path).expect("read the CRI log");
    eprintln!(
        "demo: the container exited {}; its CRI log {}:",
        status.exit_code,
        log_path.display()
    );
    print!("{text}");
    let mut ok = status.exit_code == 0 && parse_log(&text).iter().any(|e| e.line == line);

    // A session: kubectl exec into a running container of the pod.
    let shell = c
        .create(
            &pod,
            container_config("shell", &image, "exec sleep 3600"),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&shell).expect("StartContainer");
    let args = [
        "exec",
        "demo",
        "--",
        "sh",
        "-c",
        "read -r _ _ v _ < /proc/version; echo \"kubectl exec ran in pod $HOSTNAME, on its guest kernel $v\"",
    ];
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    eprintln!("demo: $ kubectl {}", shown.join(" "));
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let out = tokio.block_on(async {
        let api = FakeApiServer::start(cri_urls(&d.socket, &shell, &pod)).await;
        api.run(Transport::WebSocket, &args, b"", Duration::from_secs(180))
            .await
    });
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ok &= out.status.success();

    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    eprintln!("demo: pod removed; {:.1?} in all", start.elapsed());
    drop(c);
    drop(d);
    std::process::exit(if ok { 0 } else { 1 });
}
