//! Pod start benchmark: N times RunPodSandbox + CreateContainer + StartContainer of a
//! busybox container until its first line is in its CRI log, then teardown, through
//! vmletd; where containerd (with runc) is installed, the same sequence through
//! containerd's CRI, alternating with vmletd in the same run, on the same CNI bridge
//! network and the same local registry. Prints per-run lines, then
//! `pod_start_ms_p50=`, `pod_start_ms_p99=` and, with containerd,
//! `containerd_pod_start_ms_p50=`, `containerd_pod_start_ms_p99=` and
//! `pod_start_vs_containerd=` (vmlet's p50 over containerd's); last
//! `idle_pod_host_rss_kib=`: the resident memory of an idle pod's VMM process (its
//! own memory plus every guest page the guest touched), 10 s after its container
//! started sleeping.
//! Used by `scripts/bench-pod.sh` (environment as for the integration tests).
//!
//! Usage: pod-bench [--runs N] [--no-containerd]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vmlet_agent::testing::busybox_image_with;
use vmlet_integration_tests::cri::{
    busybox_registry, container_config, pod_config, CriClient, Vmletd,
};
use vmlet_integration_tests::net::Net;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--runs N"),
        None => 10,
    };
    let (registry, image) = busybox_registry("busybox:bench");
    let net = Net::new(None);
    let d = net.daemon(&registry, &image);
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

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let ms = pod_start(&c, &format!("bench-{run}"), &image, &d.log_dir());
        println!("run {run}: pod_start_ms={ms:.1}");
        ours.push(ms);
        if let Some((_, cc, logs)) = &baseline {
            let ms = pod_start(cc, &format!("ctrd-{run}"), &image, logs);
            println!("run {run}: containerd_pod_start_ms={ms:.1}");
            theirs.push(ms);
        }
    }
    let p50 = report("", &mut ours);
    if !theirs.is_empty() {
        let base = report("containerd_", &mut theirs);
        println!("pod_start_vs_containerd={:.3}", p50 / base);
    }
    println!("idle_pod_host_rss_kib={}", idle_pod_rss_kib(&c, &d, &image));
}

/// VmRSS of the VMM of a pod whose one container sleeps.
fn idle_pod_rss_kib(c: &CriClient, d: &Vmletd, image: &str) -> u64 {
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
    let pids = d.vmm_pids();
    assert_eq!(pids.len(), 1, "one VMM expected: {pids:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    rss
}
