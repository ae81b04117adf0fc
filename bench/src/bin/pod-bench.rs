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
//!        pod-bench --templates [--runs N] [--idle-pods N] [--no-containerd] [--density-only]

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmlet_bench::arg;

use serde_json::json;
use vmlet_integration_tests::cri::{
    busybox_registry, container_config, pod_config, v1, CriClient, Vmletd,
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
    pod_start_with(c, name, image, log_dir, &|_, _| {})
}

/// Changes a benchmarked pod's and container's configs.
type Shape<'a> = &'a dyn Fn(&mut v1::PodSandboxConfig, &mut v1::ContainerConfig);

/// [`pod_start`] with the pod and container configs as `shape` makes them.
fn pod_start_with(
    c: &CriClient,
    name: &str,
    image: &str,
    log_dir: &Path,
    shape: Shape<'_>,
) -> Result<f64, String> {
    let mut pod_cfg = pod_config(name, log_dir);
    let mut ctr_cfg = container_config(name, image, "echo first-line; sleep 60");
    shape(&mut pod_cfg, &mut ctr_cfg);
    let start = Instant::now();
    let pod = c
        .run_pod(pod_cfg.clone())
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    let started = (|| {
        let id = c
            .create(&pod, ctr_cfg.clone(), &pod_cfg)
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
    ctrd: Containerd,
    client: CriClient,
    logs: PathBuf,
}

/// N runs of vmletd (`c`, logging to `log_dir`) alternating with the baseline, each
/// pair in the other order than the last, every pod's and container's configs as
/// `shape` makes them; with `refill`, vmletd's warm pool is refilled before each run
/// of either runtime.
#[allow(clippy::too_many_arguments)]
fn phase(
    label: &str,
    c: &CriClient,
    log_dir: &Path,
    baseline: Option<&Baseline>,
    image: &str,
    runs: usize,
    refill: bool,
    shape: Shape<'_>,
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
                (
                    "",
                    pod_start_with(c, &name, image, log_dir, shape),
                    &mut ours,
                )
            } else if let Some(b) = baseline {
                let name = format!("{}ctrd-{run}", label.replace('_', "-"));
                (
                    "containerd_",
                    pod_start_with(&b.client, &name, image, &b.logs, shape),
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

/// The baseline, unless `--no-containerd` asks for none.
fn baseline_unless_refused(
    args: &[String],
    registry: &TestRegistry,
    image: &str,
    net: &Net,
) -> Option<Baseline> {
    if args.iter().any(|a| a == "--no-containerd") {
        None
    } else {
        start_baseline(registry, image, net)
    }
}

/// containerd + runc on `net` with `image` pulled, or None (said why) where it cannot
/// run.
fn start_baseline(registry: &TestRegistry, image: &str, net: &Net) -> Option<Baseline> {
    let pause = registry
        .push(
            &busybox_image_with(json!({"Cmd": ["/bin/sleep", "2147483647"]})).expect("pause"),
            "pause:bench",
        )
        .expect("push pause");
    match Containerd::start(registry.addr(), &pause, net) {
        Ok(ctrd) => {
            let cc = CriClient::connect(&ctrd.socket()).expect("connect to containerd");
            cc.pull(image).expect("containerd PullImage");
            cc.pull(&pause).expect("containerd PullImage (pause)");
            let logs = ctrd.dir.path().join("logs");
            std::fs::create_dir_all(&logs).expect("containerd log directory");
            Some(Baseline {
                ctrd,
                client: cc,
                logs,
            })
        }
        Err(why) => {
            println!("containerd baseline skipped: {why}");
            None
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--streaming") {
        streaming::main(&args);
        return;
    }
    if args.iter().any(|a| a == "--volumes") {
        volumes::main(&args);
        return;
    }
    if args.iter().any(|a| a == "--security") {
        security::main(&args);
        return;
    }
    if args.iter().any(|a| a == "--templates") {
        templates::main(&args);
        return;
    }
    if args.iter().any(|a| a == "--jail") {
        jail::main(&args);
        return;
    }
    let runs = arg(&args, "--runs", 10);
    let warm_pool = arg(&args, "--warm-pool", 1);
    let idle_pods = arg(&args, "--idle-pods", 5).max(1);
    let (registry, image) = busybox_registry("busybox:bench");
    let net = Net::new(None);

    let baseline = baseline_unless_refused(&args, &registry, &image, &net);

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
        &|_, _| {},
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
            &|_, _| {},
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

/// `--volumes`: what volumes add to pod start, what a shared file system costs.
mod volumes {
    use super::*;

    /// A kubelet pod directory: hosts file, termination log, service-account token and
    /// one configMap, in the kubelet's layout.
    fn kubelet_dir(root: &Path) -> PathBuf {
        let pod = root.join("pods/5b0e7d4c-3a2f-4e1d-9c8b-7a6f5e4d3c2b");
        let atomic = |rel: &str, keys: &[(&str, String)]| {
            let v = pod.join("volumes").join(rel);
            let ts = "..2026_12_05_00_00_00.1";
            std::fs::create_dir_all(v.join(ts)).unwrap();
            for (k, val) in keys {
                std::fs::write(v.join(ts).join(k), val).unwrap();
                std::os::unix::fs::symlink(format!("..data/{k}"), v.join(k)).unwrap();
            }
            std::os::unix::fs::symlink(ts, v.join("..data")).unwrap();
        };
        atomic(
            "kubernetes.io~projected/kube-api-access-b3nch",
            &[
                ("token", "t".repeat(900)),
                ("ca.crt", "c".repeat(1100)),
                ("namespace", "default".into()),
            ],
        );
        atomic(
            "kubernetes.io~configmap/settings",
            &[("app.yaml", "k: v\n".repeat(200))],
        );
        std::fs::create_dir_all(pod.join("containers/app")).unwrap();
        std::fs::write(pod.join("containers/app/0b1c"), "").unwrap();
        std::fs::write(pod.join("etc-hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        pod
    }

    fn mount(host: PathBuf, container: &str, readonly: bool) -> v1::Mount {
        v1::Mount {
            container_path: container.into(),
            host_path: host.display().to_string(),
            readonly,
            ..Default::default()
        }
    }

    fn kubelet_mounts(pod: &Path) -> Vec<v1::Mount> {
        vec![
            mount(pod.join("etc-hosts"), "/etc/hosts", false),
            mount(
                pod.join("containers/app/0b1c"),
                "/dev/termination-log",
                false,
            ),
            mount(
                pod.join("volumes/kubernetes.io~projected/kube-api-access-b3nch"),
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true,
            ),
            mount(
                pod.join("volumes/kubernetes.io~configmap/settings"),
                "/etc/app",
                true,
            ),
        ]
    }

    fn shared(pod: &mut v1::PodSandboxConfig) {
        pod.annotations
            .insert("io.vmlet.shared-fs".into(), "true".into());
    }

    /// Alternating runs of two shapes; their p50s, printed as `a_pod_start_ms_p50` etc.
    fn alternate(
        c: &CriClient,
        d: &Vmletd,
        image: &str,
        runs: usize,
        refill: bool,
        (a, shape_a): (&str, Shape<'_>),
        (b, shape_b): (&str, Shape<'_>),
    ) -> (Option<f64>, Option<f64>) {
        let (mut ra, mut rb) = (Runs::default(), Runs::default());
        for run in 0..runs {
            let a_first = run % 2 == 0;
            for first in [a_first, !a_first] {
                if refill {
                    if let Err(e) = c.try_wait_warm_pool_full(Duration::from_secs(600)) {
                        println!("run {run}: {e}");
                    }
                }
                let (label, shape, into) = if first {
                    (a, shape_a, &mut ra)
                } else {
                    (b, shape_b, &mut rb)
                };
                let name = format!("{}-{run}", label.replace('_', "-"));
                match pod_start_with(c, &name, image, &d.log_dir(), shape) {
                    Ok(ms) => {
                        println!("run {run}: {label}_pod_start_ms={ms:.1}");
                        into.times.push(ms);
                    }
                    Err(e) => {
                        println!("run {run}: {label}_pod_start failed: {e}");
                        into.failed += 1;
                    }
                }
            }
        }
        (ra.report(&format!("{a}_")), rb.report(&format!("{b}_")))
    }

    fn rss_kib(pid: u32) -> Result<u64, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("process {pid}: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or(format!("VmRSS of {pid}"))
    }

    fn pid_with_arg(arg: &str) -> Option<u32> {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            cmd.split(|b| *b == 0)
                .any(|a| a == arg.as_bytes())
                .then_some(pid)
        })
    }

    /// An idle pod with a shared file system: its VMM's and virtiofsd's RSS; then the
    /// sequential read of a 256 MiB file through virtio-fs and on the host, MiB/s.
    fn shared_pod_figures(
        c: &CriClient,
        d: &Vmletd,
        image: &str,
        host: &Path,
    ) -> Result<(), String> {
        let big = host.join("big");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&big).map_err(|e| e.to_string())?;
            let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
            for _ in 0..256 {
                f.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            f.sync_all().map_err(|e| e.to_string())?;
        }
        let mut pod_cfg = pod_config("idle-shared", &d.log_dir());
        shared(&mut pod_cfg);
        let pod = c.run_pod(pod_cfg.clone()).map_err(|e| e.to_string())?;
        let mut cfg = container_config("idle-shared", image, "sleep 100000");
        cfg.mounts = vec![mount(host.to_owned(), "/data", true)];
        let id = c.create(&pod, cfg, &pod_cfg).map_err(|e| e.to_string())?;
        c.start(&id).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_secs(15));
        let record: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.state_dir().join("pods").join(&pod).join("pod.json"))
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let vmm = record["vmm_pid"].as_u64().ok_or("no vmm_pid")? as u32;
        let socket = d.run_dir().join("pods").join(&pod).join("fs.sock");
        let fsd = pid_with_arg(&format!("--socket-path={}", socket.display()))
            .ok_or("no virtiofsd for the pod")?;
        let (vmm_rss, fsd_rss) = (rss_kib(vmm)?, rss_kib(fsd)?);
        println!("shared_idle_pod_vmm_rss_kib={vmm_rss}");
        println!("shared_idle_pod_virtiofsd_rss_kib={fsd_rss}");
        println!("shared_idle_pod_rss_kib={}", vmm_rss + fsd_rss);

        // The host's read first: both then read from the host's page cache.
        let start = Instant::now();
        let mut f = std::fs::File::open(&big).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        use std::io::Read;
        while f.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
        let host_s = start.elapsed().as_secs_f64();
        // The image links only a few applets: call them through busybox. Debian's
        // busybox dd prints no time, so the guest's uptime (10 ms steps) times it.
        let script = "read a _ </proc/uptime; \
                      /bin/busybox dd if=/data/big of=/dev/null bs=1M 2>/dev/null || exit 1; \
                      read b _ </proc/uptime; echo $a $b";
        let r = c
            .exec(&id, &["/bin/busybox", "sh", "-c", script], 300)
            .map_err(|e| e.to_string())?;
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        let times: Vec<f64> = out
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        let guest_s = match (r.exit_code, times.as_slice()) {
            (0, [a, b]) if b > a => b - a,
            _ => {
                return Err(format!(
                    "the read said {out:?} ({})",
                    String::from_utf8_lossy(&r.stderr)
                ))
            }
        };
        println!("virtiofs_read_256mib_mib_s={:.0}", 256.0 / guest_s);
        println!("host_read_256mib_mib_s={:.0}", 256.0 / host_s);
        println!("virtiofs_read_vs_host={:.3}", host_s / guest_s);
        c.stop_pod(&pod)
            .and_then(|()| c.remove_pod(&pod))
            .map_err(|e| e.to_string())
    }

    pub fn main(args: &[String]) {
        let runs = arg(args, "--runs", 10);
        let (registry, image) = busybox_registry("busybox:bench");
        let net = Net::new(None);
        let root = tempfile::tempdir().expect("tempdir");
        let kpod = kubelet_dir(root.path());
        let host = root.path().join("hostpath");
        std::fs::create_dir_all(&host).unwrap();

        // Warm pool of one, refilled before each run: the kubelet's volumes next to none.
        let d = daemon(&net, &registry, &image, 1);
        let c = d.client();
        let with_volumes = |_: &mut v1::PodSandboxConfig, ctr: &mut v1::ContainerConfig| {
            ctr.mounts = kubelet_mounts(&kpod);
        };
        let (plain, vols) = alternate(
            &c,
            &d,
            &image,
            runs,
            true,
            ("plain", &|_, _| {}),
            ("volumes", &with_volumes),
        );
        if let (Some(p), Some(v)) = (plain, vols) {
            println!("volumes_pod_start_vs_plain={:.3}", v / p);
        }
        drop(c);
        drop(d);

        // No warm pool: a pod with a shared file system (one hostPath) boots its own
        // VM and virtiofsd; next to a plain cold start.
        let d = daemon(&net, &registry, &image, 0);
        let c = d.client();
        let with_share = |pod: &mut v1::PodSandboxConfig, ctr: &mut v1::ContainerConfig| {
            shared(pod);
            ctr.mounts = vec![mount(host.clone(), "/data", false)];
        };
        let (cold, hostpath) = alternate(
            &c,
            &d,
            &image,
            runs,
            false,
            ("cold", &|_, _| {}),
            ("hostpath_cold", &with_share),
        );
        if let (Some(p), Some(v)) = (cold, hostpath) {
            println!("hostpath_pod_start_vs_cold={:.3}", v / p);
        }
        if let Err(e) = shared_pod_figures(&c, &d, &image, &host) {
            println!("shared pod figures failed: {e}");
        }
    }
}

/// `--jail`: what the VMM's jail (uid, namespaces, pivot_root, dropped capabilities)
/// and its host cgroup add to pod start: cold starts (every pod boots its own VMM)
/// of a daemon with both next to one with neither, alternating.
mod jail {
    use super::*;

    pub fn main(args: &[String]) {
        let runs = arg(args, "--runs", 20);
        let (registry, image) = busybox_registry("busybox:bench");
        let net = Net::new(None);
        let start = |extra: &str| {
            let d = Vmletd::start_with(
                &["--insecure-registry", registry.addr(), "--warm-pool", "0"],
                &format!("{}{extra}", net.daemon_config()),
            );
            d.client().pull(&image).expect("PullImage");
            d
        };
        let daemons = [
            ("jailed", start("")),
            (
                "unjailed",
                start("[jail]\nenabled = false\n[cgroups]\nenabled = false\n"),
            ),
        ];
        let mut times: [Runs; 2] = [Runs::default(), Runs::default()];
        for run in 0..runs {
            // Each pair in the other order than the last.
            let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (name, d) = &daemons[i];
                match pod_start(&d.client(), &format!("{name}-{run}"), &image, &d.log_dir()) {
                    Ok(ms) => {
                        println!("run {run}: {name}_pod_start_ms={ms:.1}");
                        times[i].times.push(ms);
                    }
                    Err(e) => {
                        println!("run {run}: {name}_pod_start failed: {e}");
                        times[i].failed += 1;
                    }
                }
            }
        }
        let [jailed, unjailed] = &mut times;
        if let (Some(j), Some(u)) = (jailed.report("jailed_"), unjailed.report("unjailed_")) {
            println!("jail_adds_ms_p50={:.1}", j - u);
        }
    }
}

/// `--security`: what a seccomp filter adds to container start.
mod security {
    use super::*;

    /// CreateContainer + StartContainer in `pod` until the container's first log line,
    /// in milliseconds; the container is removed afterwards.
    fn container_start(
        c: &CriClient,
        pod: &str,
        pod_cfg: &v1::PodSandboxConfig,
        cfg: v1::ContainerConfig,
        log_dir: &Path,
    ) -> Result<f64, String> {
        let name = cfg
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let log = log_dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&log);
        let start = Instant::now();
        let id = c
            .create(pod, cfg, pod_cfg)
            .map_err(|e| format!("CreateContainer: {e}"))?;
        c.start(&id).map_err(|e| format!("StartContainer: {e}"))?;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" stdout F first-line")
        {
            if start.elapsed() > Duration::from_secs(120) {
                return Err("no first line within 120 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        c.stop(&id, 0)
            .and_then(|()| c.remove(&id))
            .map_err(|e| format!("removing the container: {e}"))?;
        Ok(ms)
    }

    pub fn main(args: &[String]) {
        let runs = arg(args, "--runs", 20);
        let (registry, image) = busybox_registry("busybox:bench");
        let net = Net::new(None);
        let d = daemon(&net, &registry, &image, 1);
        let c = d.client();
        let pod_cfg = pod_config("seccomp-bench", &d.log_dir());
        let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
        let profiles = [
            ("unconfined", v1::security_profile::ProfileType::Unconfined),
            (
                "runtime_default",
                v1::security_profile::ProfileType::RuntimeDefault,
            ),
        ];
        let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut failed = [0usize; 2];
        for run in 0..runs {
            // Each pair in the other order than the last.
            let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (name, t) = profiles[i];
                let mut cfg = container_config(
                    &format!("{name}-{run}"),
                    &image,
                    "echo first-line; sleep 60",
                );
                cfg.linux = Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        seccomp: Some(v1::SecurityProfile {
                            profile_type: t as i32,
                            localhost_ref: String::new(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                match container_start(&c, &pod, &pod_cfg, cfg, &d.log_dir()) {
                    Ok(ms) => {
                        println!("run {run} {name}: {ms:.1} ms");
                        times[i].push(ms);
                    }
                    Err(e) => {
                        println!("run {run} {name}: failed: {e}");
                        failed[i] += 1;
                    }
                }
            }
        }
        let mut p50 = [None, None];
        for (i, (name, _)) in profiles.iter().enumerate() {
            println!("failed_runs_{name}={}", failed[i]);
            times[i].sort_by(|a, b| a.total_cmp(b));
            if !times[i].is_empty() {
                let v = percentile(&times[i], 0.5);
                println!("{name}_container_start_ms_p50={v:.1}");
                println!(
                    "{name}_container_start_ms_p99={:.1}",
                    percentile(&times[i], 0.99)
                );
                p50[i] = Some(v);
            }
        }
        if let [Some(u), Some(r)] = p50 {
            println!("seccomp_adds_ms_p50={:.1}", r - u);
        }
        let _ = c.stop_pod(&pod).and_then(|()| c.remove_pod(&pod));
    }
}

/// `--streaming`: `kubectl exec` round trips next to containerd + runc, and
/// `kubectl port-forward` throughput next to a direct connection to the pod's IP.
mod streaming {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use vmlet_integration_tests::kubectl::{cri_urls, FakeApiServer, Transport};

    use super::*;

    /// MiB of one transfer, unless `--mib N`.
    const MIB: usize = 64;
    const KUBECTL: Duration = Duration::from_secs(180);

    /// A pod with a container running `script` through `c`; (pod, container).
    fn pod_with(
        c: &CriClient,
        name: &str,
        image: &str,
        log_dir: &Path,
        script: &str,
    ) -> (String, String) {
        let pod_cfg = pod_config(name, log_dir);
        let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
        let id = c
            .create(&pod, container_config(name, image, script), &pod_cfg)
            .expect("CreateContainer");
        c.start(&id).expect("StartContainer");
        (pod, id)
    }

    /// One `kubectl exec p -- sh -c 'echo hello'`, start to exit status, in ms.
    fn exec_once(rt: &tokio::runtime::Runtime, api: &FakeApiServer) -> Result<f64, String> {
        let start = Instant::now();
        let out = rt.block_on(api.run(
            Transport::WebSocket,
            &["exec", "p", "--", "sh", "-c", "echo hello"],
            b"",
            KUBECTL,
        ));
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() || out.stdout != b"hello\n" {
            return Err(format!(
                "{:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(ms)
    }

    /// GET /big (`bytes` long) from `addr`; MiB/s of the whole response, checked for
    /// its length.
    async fn transfer(addr: (&str, u16), bytes: usize) -> Result<f64, String> {
        let start = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr:?}: {e}"))?;
        s.write_all(b"GET /big HTTP/1.0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if got < bytes {
            return Err(format!("got {got} bytes of {bytes}"));
        }
        Ok(bytes as f64 / (1 << 20) as f64 / secs)
    }

    fn p50(label: &str, v: &mut [f64]) -> Option<f64> {
        if v.is_empty() {
            println!("{label}: no successful run");
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let m = percentile(v, 0.5);
        println!("{label}_p50={m:.1}");
        Some(m)
    }

    pub fn main(args: &[String]) {
        let runs = arg(args, "--runs", 20);
        let bytes = arg(args, "--mib", MIB) << 20;
        let skip_exec = args.iter().any(|a| a == "--no-exec");
        let (registry, image) = busybox_registry("busybox:bench");
        let net = Net::new(None);
        let baseline = if skip_exec || args.iter().any(|a| a == "--no-containerd") {
            None
        } else {
            start_baseline(&registry, &image, &net)
        };
        let d = daemon(&net, &registry, &image, 1);
        let c = d.client();
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");

        // Exec round trips, alternating, each pair in the other order than the last.
        let sleeper = "exec sleep 100000";
        let (pod, id) = pod_with(&c, "exec-bench", &image, &d.log_dir(), sleeper);
        let ours = rt.block_on(FakeApiServer::start(cri_urls(&d.socket, &id, &pod)));
        let theirs = baseline.as_ref().map(|b| {
            let (pod, id) = pod_with(&b.client, "exec-bench", &image, &b.logs, sleeper);
            rt.block_on(FakeApiServer::start(cri_urls(&b.ctrd.socket(), &id, &pod)))
        });
        let (mut ours_ms, mut theirs_ms) = (Vec::new(), Vec::new());
        for run in 0..if skip_exec { 0 } else { runs } {
            let first = run % 2 == 0;
            for vmlet in [first, !first] {
                let (api, into, who) = match (vmlet, &theirs) {
                    (true, _) => (&ours, &mut ours_ms, ""),
                    (false, Some(api)) => (api, &mut theirs_ms, "containerd_"),
                    (false, None) => continue,
                };
                match exec_once(&rt, api) {
                    Ok(ms) => {
                        println!("run {run}: {who}exec_ms={ms:.1}");
                        into.push(ms);
                    }
                    Err(e) => println!("run {run}: {who}exec failed: {e}"),
                }
            }
        }
        if !skip_exec {
            let ours_p50 = p50("exec_ms", &mut ours_ms);
            let theirs_p50 = p50("containerd_exec_ms", &mut theirs_ms);
            if let (Some(a), Some(b)) = (ours_p50, theirs_p50) {
                println!("exec_vs_containerd={:.3}", a / b);
            }
        }
        c.stop_pod(&pod).expect("StopPodSandbox");
        c.remove_pod(&pod).expect("RemovePodSandbox");
        drop(theirs);

        // Port-forward: httpd on every address of the pod serves `bytes`.
        let script = format!(
            "mkdir -p /tmp/www && busybox head -c {bytes} /dev/zero > /tmp/www/big && \
             exec busybox httpd -f -p 8080 -h /tmp/www"
        );
        let (pod, id) = pod_with(&c, "forward-bench", &image, &d.log_dir(), &script);
        let ip = c.pod_ip(&pod);
        let start = Instant::now();
        while rt.block_on(transfer((ip.as_str(), 8080), bytes)).is_err() {
            assert!(start.elapsed() < KUBECTL, "httpd never served /big");
            std::thread::sleep(Duration::from_millis(500));
        }
        let api = rt.block_on(FakeApiServer::start(cri_urls(&d.socket, &id, &pod)));
        let kubectl_log = d.log_dir().join("kubectl-port-forward.log");
        let mut child = rt.block_on(async {
            api.kubectl(Transport::WebSocket)
                .args(["port-forward", "pod/p", ":8080"])
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&kubectl_log).expect("kubectl log"))
                .spawn()
                .expect("kubectl port-forward")
        });
        let stdout = child.stdout.take().expect("kubectl stdout");
        let local: u16 = rt.block_on(async {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                let line = tokio::time::timeout(KUBECTL, lines.next_line())
                    .await
                    .expect("kubectl port-forward did not start")
                    .expect("kubectl output")
                    .expect("kubectl port-forward exited");
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    let (l, _) = rest.split_once(" -> ").expect("Forwarding line");
                    let port = l.parse().expect("local port");
                    // kubectl prints a line per connection: keep reading, or its next
                    // write dies of SIGPIPE and the forwarding with it.
                    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                    break port;
                }
            }
        });
        let (mut fwd, mut direct) = (Vec::new(), Vec::new());
        for run in 0..runs.min(10) {
            let first = run % 2 == 0;
            for forwarded in [first, !first] {
                let (addr, into, who) = if forwarded {
                    (("127.0.0.1", local), &mut fwd, "port_forward")
                } else {
                    ((ip.as_str(), 8080), &mut direct, "direct")
                };
                match rt.block_on(transfer(addr, bytes)) {
                    Ok(v) => {
                        println!("run {run}: {who}_mib_s={v:.1}");
                        into.push(v);
                    }
                    Err(e) => println!(
                        "run {run}: {who} failed: {e}; kubectl: {}; the VMM's log ends: {}",
                        std::fs::read_to_string(&kubectl_log).unwrap_or_default(),
                        vmlet_integration_tests::tail(
                            &d.state_dir().join("pods").join(&pod).join("vmm.log"),
                            5
                        )
                    ),
                }
            }
        }
        let _ = rt.block_on(child.kill());
        let a = p50("port_forward_mib_s", &mut fwd);
        let b = p50("direct_mib_s", &mut direct);
        if let (Some(a), Some(b)) = (a, b) {
            println!("port_forward_vs_direct={:.3}", a / b);
        }
        c.stop_pod(&pod).expect("StopPodSandbox");
        c.remove_pod(&pod).expect("RemovePodSandbox");
    }
}

/// `--templates`: pods restored from templates, as vmletd starts them by default (no
/// warm pool, templates on). One pod of each shape boots first and its template is
/// made; then N pod starts of the default size and N of a larger one (a 512 MiB
/// memory limit: a shape of its own), each alternating with containerd + runc
/// (`template_pod_start_vs_containerd=`, `template_big_pod_start_vs_containerd=`).
/// Density: `--idle-pods N` idle pods (default 10) restored, then as many booted by a
/// daemon with templates off: the host's cost per pod (MemAvailable drop), the VMM's
/// private memory per pod (`*_idle_pod_private_kib=`, its anonymous resident pages:
/// what the pod alone holds; a restored VMM's untouched guest pages are the
/// template's page cache, shared), and `*_pods_per_gib=` from the host cost.
mod templates {
    use super::*;

    const BIG_MIB: i64 = 512;

    fn big(p: &mut v1::PodSandboxConfig, _: &mut v1::ContainerConfig) {
        p.linux = Some(v1::LinuxPodSandboxConfig {
            resources: Some(v1::LinuxContainerResources {
                memory_limit_in_bytes: BIG_MIB << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    fn template_count(d: &Vmletd) -> usize {
        std::fs::read_dir(d.state_dir().join("templates"))
            .map(|r| r.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    }

    /// Starts one pod shaped by `shape` (it boots) and waits until vmletd has made
    /// one more template.
    fn prime(d: &Vmletd, image: &str, name: &str, shape: Shape<'_>) {
        let before = template_count(d);
        let ms = pod_start_with(&d.client(), name, image, &d.log_dir(), shape)
            .unwrap_or_else(|e| panic!("the first pod of {name}: {e}"));
        println!("{name}: booted in {ms:.1} ms");
        let start = Instant::now();
        while template_count(d) == before {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "no template made for {name} in 600 s"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        println!(
            "{name}: template made after {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }

    /// `--density-only`: the density figures alone (restored, then booted), for runs
    /// with more pods than the start-time phases could afford.
    fn density_alone(flags: &[&str], net: &Net, image: &str, idle_pods: usize) {
        let d = Vmletd::start_configured(flags, &net.daemon_config(), "templates = true\n");
        d.client().pull(image).expect("PullImage");
        prime(&d, image, "prime-default", &|_, _| {});
        density(&d, image, idle_pods, "restored_");
        drop(d);
        let d = Vmletd::start_with(flags, &net.daemon_config());
        d.client().pull(image).expect("PullImage");
        density(&d, image, idle_pods, "booted_");
    }

    /// Idle pods' figures under `prefix`: host cost, private memory and pods per GiB.
    fn density(d: &Vmletd, image: &str, n: usize, prefix: &str) {
        let c = d.client();
        // Pod names become hostnames: no '_'.
        match idle_pods_cost(&c, &d.log_dir(), image, &prefix.replace('_', "-"), n) {
            Ok((cost, pods)) => {
                let rss = idle_rss_kib(d, &pods);
                remove_pods(&c, &pods);
                println!("{prefix}idle_pod_host_cost_kib={cost}");
                if cost > 0 {
                    println!("{prefix}pods_per_gib={:.1}", 1048576.0 / cost as f64);
                }
                match rss {
                    Ok(rss) => {
                        println!("{prefix}idle_pod_private_kib={}", rss.anon);
                        println!("{prefix}idle_pod_rss_kib={}", rss.total);
                        println!("{prefix}idle_pod_rss_file_kib={}", rss.file);
                    }
                    Err(e) => println!("{prefix}idle pod RSS failed: {e}"),
                }
            }
            Err(e) => println!("{prefix}idle pods failed: {e}"),
        }
    }

    pub fn main(args: &[String]) {
        let runs = arg(args, "--runs", 10);
        let idle_pods = arg(args, "--idle-pods", 10).max(1);
        let density_only = args.iter().any(|a| a == "--density-only");
        let (registry, image) = busybox_registry("busybox:bench");
        let net = Net::new(None);
        let flags = ["--insecure-registry", registry.addr(), "--warm-pool", "0"];
        if density_only {
            density_alone(&flags, &net, &image, idle_pods);
            return;
        }
        let baseline = baseline_unless_refused(args, &registry, &image, &net);
        let d = Vmletd::start_configured(&flags, &net.daemon_config(), "templates = true\n");
        let c = d.client();
        c.pull(&image).expect("PullImage");
        prime(&d, &image, "prime-default", &|_, _| {});
        prime(&d, &image, "prime-big", &big);

        let shapes: [(&str, Shape<'_>); 2] = [("template_", &|_, _| {}), ("template_big_", &big)];
        let mut figures: Vec<(&str, Runs, Runs)> = shapes
            .into_iter()
            .map(|(label, shape)| {
                let log_dir = d.log_dir();
                let (ours, theirs) = phase(
                    label,
                    &c,
                    &log_dir,
                    baseline.as_ref(),
                    &image,
                    runs,
                    false,
                    shape,
                );
                (label, ours, theirs)
            })
            .collect();
        density(&d, &image, idle_pods, "restored_");
        drop(c);
        drop(d);
        let d = Vmletd::start_with(&flags, &net.daemon_config());
        d.client().pull(&image).expect("PullImage");
        density(&d, &image, idle_pods, "booted_");

        for (label, ours, theirs) in &mut figures {
            let p50 = ours.report(label);
            if baseline.is_some() {
                if let (Some(p50), Some(base)) =
                    (p50, theirs.report(&format!("{label}containerd_")))
                {
                    println!("{label}pod_start_vs_containerd={:.3}", p50 / base);
                }
            }
        }
    }
}
