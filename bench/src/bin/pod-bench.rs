//! Pod start benchmark: N times RunPodSandbox + CreateContainer + StartContainer of a
//! busybox container until its first line is in its CRI log, then teardown, through
//! vmletd; where containerd (with runc) is installed, the same sequence through
//! containerd's CRI, alternating with vmletd in the same run (each pair in the other
//! order than the last), on the same CNI bridge network and the same local registry.
//! Prints per-run lines, then `pod_start_ms_p50=`, `pod_start_ms_p99=` and, with
//! containerd, `containerd_pod_start_ms_p50=`, `containerd_pod_start_ms_p99=` and
//! `pod_start_vs_containerd=` (vmlet's p50 over containerd's). vmletd runs with a warm
//! pool (`--warm-pool N`, default 1 as in vmletd), refilled before each run of either
//! runtime (so that its boot takes no CPU from the other's run); then come N runs
//! without one, again alternating with containerd in that phase:
//! `cold_pod_start_ms_p50=`, `cold_pod_start_ms_p99=`,
//! `cold_containerd_pod_start_ms_p50=` and `cold_pod_start_vs_containerd=` (over the
//! containerd runs of the same phase). A run that fails is printed and counted
//! (`failed_runs_*=`), not fatal, and not in the figures.
//!
//! Memory, with the daemon that has no warm pool: `idle_pod_host_cost_kib=`, the
//! host's memory cost of one more idle pod (one container sleeping): the drop in the
//! host's `MemAvailable` from before to 15 s after starting `--idle-pods N` (default
//! 5) such pods, divided by N; `containerd_idle_pod_host_cost_kib=` the same for
//! containerd + runc in the same run. Then, as a second figure,
//! `idle_pod_host_rss_kib=`: the resident memory of an idle pod's VMM process (its own
//! memory plus every guest page the guest touched; median over the idle pods), and its
//! private (`idle_pod_host_rss_anon_kib=`) and file-backed
//! (`idle_pod_host_rss_file_kib=`, page cache shared by all pods) parts.
//! Used by `scripts/bench-pod.sh` (environment as for the integration tests).
//!
//! Usage: pod-bench [--runs N] [--warm-pool N] [--idle-pods N] [--no-containerd]

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

/// One pod start through `c`: milliseconds until the container's first log line. On
/// failure the pod, if it was created, is removed again.
fn pod_start(c: &CriClient, name: &str, image: &str, log_dir: &Path) -> Result<f64, String> {
    let pod_cfg = pod_config(name, log_dir);
    let start = Instant::now();
    let pod = c
        .run_pod(pod_cfg.clone())
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    let started = (|| {
        let id = c
            .create(
                &pod,
                container_config(name, image, "echo first-line; sleep 60"),
                &pod_cfg,
            )
            .map_err(|e| format!("CreateContainer: {e}"))?;
        c.start(&id).map_err(|e| format!("StartContainer: {e}"))?;
        let log = log_dir.join(format!("{name}.log"));
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" stdout F first-line")
        {
            if start.elapsed() > Duration::from_secs(300) {
                return Err("no first line within 300 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    })();
    let stopped = c
        .stop_pod(&pod)
        .and_then(|()| c.remove_pod(&pod))
        .map_err(|e| format!("removing the pod: {e}"));
    let ms = started?;
    stopped?;
    Ok(ms)
}

/// One runtime's runs in one phase.
#[derive(Default)]
struct Runs {
    times: Vec<f64>,
    failed: usize,
}

impl Runs {
    /// Prints the figures under `prefix` (and the failure count); the p50, if any run
    /// succeeded.
    fn report(&mut self, prefix: &str) -> Option<f64> {
        println!("failed_runs_{prefix}pod_start={}", self.failed);
        if self.times.is_empty() {
            println!("{prefix}pod_start: no successful run");
            return None;
        }
        self.times.sort_by(|a, b| a.total_cmp(b));
        let p50 = percentile(&self.times, 0.5);
        println!("{prefix}pod_start_ms_p50={p50:.1}");
        println!(
            "{prefix}pod_start_ms_p99={:.1}",
            percentile(&self.times, 0.99)
        );
        Some(p50)
    }
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

/// containerd's client and the folder its pods log to.
struct Baseline {
    _ctrd: Containerd,
    client: CriClient,
    logs: PathBuf,
}

/// N runs of vmletd (`c`, logging to `log_dir`) alternating with the baseline, each
/// pair in the other order than the last; with `refill`, vmletd's warm pool is
/// refilled before each run of either runtime.
fn phase(
    label: &str,
    c: &CriClient,
    log_dir: &Path,
    baseline: Option<&Baseline>,
    image: &str,
    runs: usize,
    refill: bool,
) -> (Runs, Runs) {
    let (mut ours, mut theirs) = (Runs::default(), Runs::default());
    for run in 0..runs {
        let vmlet_first = run % 2 == 0;
        for vmlet in [vmlet_first, !vmlet_first] {
            if refill {
                // Each runtime is measured on a machine the other leaves idle.
                if let Err(e) = c.try_wait_warm_pool_full(Duration::from_secs(600)) {
                    println!("run {run}: {e}");
                }
            }
            let (who, result, into) = if vmlet {
                let name = format!("{}bench-{run}", label.replace('_', "-"));
                ("", pod_start(c, &name, image, log_dir), &mut ours)
            } else if let Some(b) = baseline {
                let name = format!("{}ctrd-{run}", label.replace('_', "-"));
                (
                    "containerd_",
                    pod_start(&b.client, &name, image, &b.logs),
                    &mut theirs,
                )
            } else {
                continue;
            };
            match result {
                Ok(ms) => {
                    println!("run {run}: {label}{who}pod_start_ms={ms:.1}");
                    into.times.push(ms);
                }
                Err(e) => {
                    println!("run {run}: {label}{who}pod_start failed: {e}");
                    into.failed += 1;
                }
            }
        }
    }
    (ours, theirs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = flag_value(&args, "--runs", 10);
    let warm_pool = flag_value(&args, "--warm-pool", 1);
    let idle_pods = flag_value(&args, "--idle-pods", 5).max(1);
    let (registry, image) = busybox_registry("busybox:bench");
    let net = Net::new(None);

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
                Some(Baseline {
                    _ctrd: ctrd,
                    client: cc,
                    logs,
                })
            }
            Err(why) => {
                println!("containerd baseline skipped: {why}");
                None
            }
        }
    };

    println!("warm_pool={warm_pool}");
    let d = daemon(&net, &registry, &image, warm_pool);
    let c = d.client();
    let (mut ours, mut theirs) = phase(
        "",
        &c,
        &d.log_dir(),
        baseline.as_ref(),
        &image,
        runs,
        warm_pool > 0,
    );
    // The same without pre-booted VMs, again alternating with containerd: every pod
    // boots its own VM. The memory figures come from this daemon: no warm VM boots
    // meanwhile.
    let (cold, d) = if warm_pool > 0 {
        drop(c);
        drop(d);
        let d = daemon(&net, &registry, &image, 0);
        let (cold, cold_theirs) = phase(
            "cold_",
            &d.client(),
            &d.log_dir(),
            baseline.as_ref(),
            &image,
            runs,
            false,
        );
        (Some((cold, cold_theirs)), d)
    } else {
        (None, d)
    };
    let memory = idle_memory(&d, baseline.as_ref(), &image, idle_pods);

    let p50 = ours.report("");
    let base = if baseline.is_some() {
        theirs.report("containerd_")
    } else {
        None
    };
    if let (Some(p50), Some(base)) = (p50, base) {
        println!("pod_start_vs_containerd={:.3}", p50 / base);
    }
    if let Some((mut cold, mut cold_theirs)) = cold {
        let cold_p50 = cold.report("cold_");
        let cold_base = if baseline.is_some() {
            cold_theirs.report("cold_containerd_")
        } else {
            None
        };
        if let (Some(p50), Some(base)) = (cold_p50, cold_base) {
            println!("cold_pod_start_vs_containerd={:.3}", p50 / base);
        }
    }
    println!("idle_pods={idle_pods}");
    match memory.vmlet {
        Ok((cost, rss)) => {
            println!("idle_pod_host_cost_kib={cost}");
            if let Some(base) = memory.containerd.as_ref().and_then(|r| r.as_ref().ok()) {
                println!("containerd_idle_pod_host_cost_kib={base}");
            }
            println!("idle_pod_host_rss_kib={}", rss.total);
            println!("idle_pod_host_rss_anon_kib={}", rss.anon);
            println!("idle_pod_host_rss_file_kib={}", rss.file);
        }
        Err(e) => println!("idle pod memory (vmlet) failed: {e}"),
    }
    if let Some(Err(e)) = &memory.containerd {
        println!("idle pod memory (containerd) failed: {e}");
    }
}

/// Resident memory of an idle pod's VMM, in KiB: all of it, the private part (VMM
/// heap, guest pages written), the part backed by files (guest kernel and initramfs
/// pages read: page cache that every pod on the node shares).
struct IdleRss {
    total: u64,
    anon: u64,
    file: u64,
}

/// The memory figures: per idle pod, the host's cost (KiB) and, for vmlet, the VMM's
/// RSS split.
struct IdleMemory {
    vmlet: Result<(i64, IdleRss), String>,
    containerd: Option<Result<i64, String>>,
}

/// The host's MemAvailable in KiB, once things settled: the median of five reads
/// after a sync and two quiet seconds.
fn settled_mem_available_kib() -> Result<i64, String> {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
    let mut reads = Vec::new();
    for _ in 0..5 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
        let kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .ok_or("no MemAvailable in /proc/meminfo")?;
        reads.push(kib);
        std::thread::sleep(Duration::from_millis(200));
    }
    reads.sort_unstable();
    Ok(reads[reads.len() / 2])
}

/// Starts `n` idle pods (a container that sleeps) through `c` and returns the host's
/// memory cost per pod in KiB (MemAvailable before minus 15 s after, over `n`) and
/// the pods' IDs. Pods started before a failure are removed.
fn idle_pods_cost(
    c: &CriClient,
    log_dir: &Path,
    image: &str,
    prefix: &str,
    n: usize,
) -> Result<(i64, Vec<String>), String> {
    let before = settled_mem_available_kib()?;
    let mut pods = Vec::new();
    let started = (|| {
        for i in 0..n {
            let name = format!("{prefix}idle-{i}");
            let pod_cfg = pod_config(&name, log_dir);
            let pod = c
                .run_pod(pod_cfg.clone())
                .map_err(|e| format!("RunPodSandbox: {e}"))?;
            pods.push(pod.clone());
            let id = c
                .create(
                    &pod,
                    container_config(&name, image, "exec sleep 3600"),
                    &pod_cfg,
                )
                .map_err(|e| format!("CreateContainer: {e}"))?;
            c.start(&id).map_err(|e| format!("StartContainer: {e}"))?;
        }
        Ok::<(), String>(())
    })();
    if let Err(e) = started {
        remove_pods(c, &pods);
        return Err(e);
    }
    // Idle: free page reporting hands back what the guests' boots touched.
    std::thread::sleep(Duration::from_secs(15));
    let after = match settled_mem_available_kib() {
        Ok(kib) => kib,
        Err(e) => {
            remove_pods(c, &pods);
            return Err(e);
        }
    };
    Ok(((before - after) / n as i64, pods))
}

fn remove_pods(c: &CriClient, pods: &[String]) {
    for pod in pods {
        if let Err(e) = c.stop_pod(pod).and_then(|()| c.remove_pod(pod)) {
            println!("removing idle pod {pod}: {e}");
        }
    }
}

fn idle_memory(d: &Vmletd, baseline: Option<&Baseline>, image: &str, n: usize) -> IdleMemory {
    let c = d.client();
    let vmlet = idle_pods_cost(&c, &d.log_dir(), image, "", n).and_then(|(cost, pods)| {
        let rss = idle_rss_kib(d, &pods);
        remove_pods(&c, &pods);
        Ok((cost, rss?))
    });
    let containerd = baseline.map(|b| {
        idle_pods_cost(&b.client, &b.logs, image, "ctrd-", n).map(|(cost, pods)| {
            remove_pods(&b.client, &pods);
            cost
        })
    });
    IdleMemory { vmlet, containerd }
}

/// The median VmRSS (and its anon and file parts) of the pods' VMMs.
fn idle_rss_kib(d: &Vmletd, pods: &[String]) -> Result<IdleRss, String> {
    let (mut total, mut anon, mut file) = (Vec::new(), Vec::new(), Vec::new());
    for pod in pods {
        let path = d.state_dir().join("pods").join(pod).join("pod.json");
        let record = std::fs::read_to_string(&path).map_err(|e| format!("{path:?}: {e}"))?;
        let record: serde_json::Value =
            serde_json::from_str(&record).map_err(|e| format!("{path:?}: {e}"))?;
        let pid = record["vmm_pid"]
            .as_u64()
            .ok_or(format!("no vmm_pid in {path:?}"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("the VMM {pid}: {e}"))?;
        let field = |name: &str| -> Result<u64, String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or(format!("{name} in /proc/{pid}/status"))
        };
        total.push(field("VmRSS:")?);
        anon.push(field("RssAnon:")?);
        file.push(field("RssFile:")?);
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    Ok(IdleRss {
        total: median(&mut total),
        anon: median(&mut anon),
        file: median(&mut file),
    })
}
