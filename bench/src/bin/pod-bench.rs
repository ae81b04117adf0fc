//! Pod start benchmark: N times RunPodSandbox + CreateContainer + StartContainer of a
//! busybox container until its first line is in its CRI log, then teardown, through
//! vmletd; where containerd (with runc) is installed, the same sequence through
//! containerd's CRI, alternating with vmletd in the same run, on the same CNI bridge
//! network and the same local registry. Prints per-run lines, then
//! `pod_start_ms_p50=`, `pod_start_ms_p99=` and, with containerd,
//! `containerd_pod_start_ms_p50=`, `containerd_pod_start_ms_p99=` and
//! `pod_start_vs_containerd=` (vmlet's p50 over containerd's). vmletd runs with a warm
//! pool (`--warm-pool N`, default 1 as in vmletd), refilled before each run of either
//! runtime (so that its boot takes no CPU from the other's run); then come the same N
//! runs without one,
//! `cold_pod_start_ms_p50=`, `cold_pod_start_ms_p99=`, `cold_pod_start_vs_containerd=`;
//! last
//! `idle_pod_host_rss_kib=`: the resident memory of an idle pod's VMM process (its
//! own memory plus every guest page the guest touched), 10 s after its container
//! started sleeping, then its private (`idle_pod_host_rss_anon_kib=`) and file-backed
//! (`idle_pod_host_rss_file_kib=`, page cache shared by all pods) parts.
//! Used by `scripts/bench-pod.sh` (environment as for the integration tests).
//!
//! Usage: pod-bench [--runs N] [--warm-pool N] [--no-containerd]

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vmlet_integration_tests::cri::{
    busybox_registry, container_config, pod_config, CriClient, Vmletd,
};
use vmlet_integration_tests::net::Net;
use vmlet_test_support::{busybox_image_with, TestRegistry};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// containerd with its CRI plugin, in a temporary root, pulling from the test
/// registry over plain HTTP, with the test network and a local pause image.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts it, or says why it cannot run here.
    fn start(registry: &str, pause: &str, net: &Net) -> Result<Containerd, String> {
        for bin in ["containerd", "runc", "containerd-shim-runc-v2"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .stdout(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if !found.success() {
                return Err(format!("{bin} is not installed"));
            }
        }
        // Under /tmp: overlayfs upper directories cannot live on an overlay root.
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let d = dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
            conf = net.conf_dir().display()
        );
        std::fs::write(dir.path().join("config.toml"), config).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let c = Containerd { child, dir };
        let start = Instant::now();
        while CriClient::connect(&c.socket()).is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("containerd did not serve its socket: {}", c.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(c) = CriClient::connect(&self.socket()) {
            for p in c.list_pods(None) {
                let _ = c.stop_pod(&p.id);
                let _ = c.remove_pod(&p.id);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // containerd leaves its snapshot mounts behind when killed.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

/// One pod start through `c`: milliseconds until the container's first log line.
fn pod_start(c: &CriClient, name: &str, image: &str, log_dir: &Path) -> f64 {
    let pod_cfg = pod_config(name, log_dir);
    let start = Instant::now();
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let id = c
        .create(
            &pod,
            container_config(name, image, "echo first-line; sleep 60"),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    let log = log_dir.join(format!("{name}.log"));
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" stdout F first-line")
    {
        assert!(start.elapsed() < Duration::from_secs(300), "no first line");
        std::thread::sleep(Duration::from_millis(2));
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    ms
}

fn report(prefix: &str, times: &mut [f64]) -> f64 {
    times.sort_by(|a, b| a.total_cmp(b));
    let p50 = percentile(times, 0.5);
    println!("{prefix}pod_start_ms_p50={p50:.1}");
    println!("{prefix}pod_start_ms_p99={:.1}", percentile(times, 0.99));
    p50
}

fn flag_value(args: &[String], flag: &str, default: usize) -> usize {
    match args.iter().position(|a| a == flag) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} N")),
        None => default,
    }
}

/// vmletd on the bench network with `warm_pool` pre-booted VMs, the image pulled.
fn daemon(net: &Net, registry: &TestRegistry, image: &str, warm_pool: usize) -> Vmletd {
    let pool = warm_pool.to_string();
    let d = Vmletd::start_with(
        &["--insecure-registry", registry.addr(), "--warm-pool", &pool],
        &net.daemon_config(),
    );
    d.client().pull(image).expect("PullImage");
    d
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = flag_value(&args, "--runs", 10);
    let warm_pool = flag_value(&args, "--warm-pool", 1);
    let (registry, image) = busybox_registry("busybox:bench");
    let net = Net::new(None);
    let d = daemon(&net, &registry, &image, warm_pool);
    let c = d.client();

    let baseline = if args.iter().any(|a| a == "--no-containerd") {
        None
    } else {
        let pause = registry
            .push(
                &busybox_image_with(json!({"Cmd": ["/bin/sleep", "2147483647"]})).expect("pause"),
                "pause:bench",
            )
            .expect("push pause");
        match Containerd::start(registry.addr(), &pause, &net) {
            Ok(ctrd) => {
                let cc = CriClient::connect(&ctrd.socket()).expect("connect to containerd");
                cc.pull(&image).expect("containerd PullImage");
                cc.pull(&pause).expect("containerd PullImage (pause)");
                let logs = ctrd.dir.path().join("logs");
                std::fs::create_dir_all(&logs).expect("containerd log directory");
                Some((ctrd, cc, logs))
            }
            Err(why) => {
                println!("containerd baseline skipped: {why}");
                None
            }
        }
    };

    println!("warm_pool={warm_pool}");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Each runtime is measured on a machine the other leaves idle: vmletd's pool is
        // refilled before either starts.
        c.wait_warm_pool_full();
        let ms = pod_start(&c, &format!("bench-{run}"), &image, &d.log_dir());
        println!("run {run}: pod_start_ms={ms:.1}");
        ours.push(ms);
        c.wait_warm_pool_full();
        if let Some((_, cc, logs)) = &baseline {
            let ms = pod_start(cc, &format!("ctrd-{run}"), &image, logs);
            println!("run {run}: containerd_pod_start_ms={ms:.1}");
            theirs.push(ms);
        }
    }
    let rss = idle_pod_rss_kib(&c, &d, &image);
    drop(c);
    drop(d);

    // The same without pre-booted VMs: every pod boots its own.
    let mut cold = Vec::new();
    if warm_pool > 0 {
        let d = daemon(&net, &registry, &image, 0);
        let c = d.client();
        for run in 0..runs {
            let ms = pod_start(&c, &format!("cold-{run}"), &image, &d.log_dir());
            println!("run {run}: cold_pod_start_ms={ms:.1}");
            cold.push(ms);
        }
    }

    let p50 = report("", &mut ours);
    let base = (!theirs.is_empty()).then(|| report("containerd_", &mut theirs));
    if let Some(base) = base {
        println!("pod_start_vs_containerd={:.3}", p50 / base);
    }
    if !cold.is_empty() {
        let cold_p50 = report("cold_", &mut cold);
        if let Some(base) = base {
            println!("cold_pod_start_vs_containerd={:.3}", cold_p50 / base);
        }
    }
    println!("idle_pod_host_rss_kib={}", rss.total);
    println!("idle_pod_host_rss_anon_kib={}", rss.anon);
    println!("idle_pod_host_rss_file_kib={}", rss.file);
}

/// VmRSS of the VMM of a pod whose one container sleeps.
/// Resident memory of an idle pod's VMM, in KiB: all of it, the private part (VMM
/// heap, guest pages written), the part backed by files (guest kernel and initramfs
/// pages read: page cache that every pod on the node shares).
struct IdleRss {
    total: u64,
    anon: u64,
    file: u64,
}

fn idle_pod_rss_kib(c: &CriClient, d: &Vmletd, image: &str) -> IdleRss {
    let pod_cfg = pod_config("idle", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let id = c
        .create(
            &pod,
            container_config("idle", image, "exec sleep 3600"),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    std::thread::sleep(Duration::from_secs(10));
    // The pod's own VMM (a warm VM may run beside it).
    let record = std::fs::read_to_string(d.state_dir().join("pods").join(&pod).join("pod.json"))
        .expect("pod record");
    let record: serde_json::Value = serde_json::from_str(&record).expect("pod record");
    let pid = record["vmm_pid"].as_u64().expect("vmm_pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    let rss = IdleRss {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    };
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    rss
}
