//! Soak tests: many pod lifecycles, repeated `kill -9` of vmletd, a burst of
//! concurrent RunPodSandbox calls. Each is bounded in count; the counts come from
//! the environment (`VMLET_SOAK_CYCLES`, `VMLET_SOAK_RESTARTS`, `VMLET_SOAK_PODS`,
//! `VMLET_SOAK_BURST`) so that `scripts/soak.sh` runs them at full size, and
//! the suite at a size that fits its time budget. Each test prints its figures.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmlet_integration_tests::cri::{
    busybox_registry, container_config, parse_log, v1, CriClient, Vmletd,
};
use vmlet_integration_tests::net::Net;
use vmlet_integration_tests::say;

const WAIT: Duration = Duration::from_secs(120);
/// Where the soak pods' host cgroups go (the kubelet's cgroup_parent).
const CGROUP_PARENT: &str = "/vmlet-soak.slice-test";

/// A count from the environment, else `default`.
fn count(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a count, not {v:?}")),
        Err(_) => default,
    }
}

/// A pod config shaped like a kubelet's: a generated name of a Deployment's pod
/// (long), a UID, no hostname, the pod's log directory, a cgroup parent and a small
/// memory limit.
fn kubelet_pod(i: usize, log_root: &Path) -> v1::PodSandboxConfig {
    let name = format!("soak-frontend-deployment-5f7c9d8b6c-{i:05}");
    let uid = format!("6f1c2d3e-4a5b-4c6d-8e9f-{i:012}");
    let log_directory = log_root.join(format!("default_{name}_{uid}"));
    std::fs::create_dir_all(&log_directory).unwrap();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name,
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: String::new(),
        log_directory: log_directory.display().to_string(),
        labels: [
            ("io.kubernetes.pod.namespace".to_string(), "default".into()),
            ("io.kubernetes.pod.uid".to_string(), uid.clone()),
        ]
        .into(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("{CGROUP_PARENT}/pod{uid}"),
            resources: Some(v1::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts container `main` (log `main.log`) running `script`.
fn start_container(
    c: &CriClient,
    pod: &str,
    cfg: &v1::PodSandboxConfig,
    image: &str,
    script: &str,
) -> String {
    let id = c
        .create(pod, container_config("main", image, script), cfg)
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    id
}

/// The stdout lines of the log `main.log` of the pod whose config is `cfg`.
fn log_lines(cfg: &v1::PodSandboxConfig) -> Vec<String> {
    let path = Path::new(&cfg.log_directory).join("main.log");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_log(&text)
        .into_iter()
        .filter(|e| e.stream == "stdout")
        .map(|e| e.line)
        .collect()
}

/// A process's resident set and open descriptors.
fn rss_kib_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// Everything a pod could leave on the host, none of it left: VMMs and virtiofsd
/// processes, pod directories, mounts below the daemon's directories, host cgroups,
/// and (through `net`) addresses, namespaces, veths and iptables rules.
fn assert_nothing_left(d: &Vmletd, net: &Net, ids: &[&str]) {
    assert!(d.vmm_pids().is_empty(), "VMMs left: {:?}", d.vmm_pids());
    let root = d.dir.path().display().to_string();
    let mut helpers = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains("virtiofsd") && text.contains(&root) {
            helpers.push(text);
        }
    }
    assert!(helpers.is_empty(), "processes left: {helpers:?}");
    for dir in [d.state_dir().join("pods"), d.run_dir().join("pods")] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<_> = mounts.lines().filter(|l| l.contains(&root)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    let cgroup = Path::new("/sys/fs/cgroup").join(CGROUP_PARENT.trim_start_matches('/'));
    let left = cgroup_dirs(&cgroup);
    assert!(left.is_empty(), "host cgroups left: {left:?}");
    net.assert_clean(ids);
}

/// Every directory below `dir` (and `dir` itself when it exists).
fn cgroup_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        out.push(d);
        todo.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    out
}

/// Pods made and removed, one after another, each with a container that runs to its
/// end: every one starts, logs and goes, nothing of them is left on the host, and
/// vmletd's memory and descriptors come back to where they were once it had run a
/// few pods (allocator and cache warm-up).
#[test]
fn pod_cycles_leave_nothing_behind_and_vmletd_memory_flat() {
    const WARM_UP: usize = 3;
    let cycles = count("VMLET_SOAK_CYCLES", 12).max(WARM_UP + 1);
    let (registry, image) = busybox_registry("busybox:soak");
    let net = Net::new(None);
    let d = net.daemon(&registry, &image);
    let c = d.client();
    let logs = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    let mut warm = (0, 0);
    let started = Instant::now();
    for i in 0..cycles {
        if i == WARM_UP {
            warm = rss_kib_and_fds(d.pid());
        }
        let cfg = kubelet_pod(i, logs.path());
        let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
        let ctr = start_container(&c, &pod, &cfg, &image, &format!("echo cycle-{i}"));
        let s = c.wait_exited(&ctr, WAIT);
        assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");
        c.wait_log_complete(&ctr, WAIT);
        assert_eq!(log_lines(&cfg), [format!("cycle-{i}")]);
        c.stop_pod(&pod).expect("StopPodSandbox");
        c.remove_pod(&pod).expect("RemovePodSandbox");
        ids.push(pod);
    }
    let elapsed = started.elapsed();
    let end = rss_kib_and_fds(d.pid());
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), cycles);
    assert!(c.list_pods(None).is_empty());
    assert_nothing_left(&d, &net, &ids);
    say(&format!(
        "{cycles} pod cycles in {:.1} s ({:.0} ms each); vmletd RSS {} KiB after {WARM_UP} \
         cycles, {} KiB at the end; descriptors {} then {}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles as f64,
        warm.0,
        end.0,
        warm.1,
        end.1
    ));
    assert!(
        end.0 * 10 <= warm.0 * 11,
        "vmletd's RSS grew more than 10%: {} KiB after {WARM_UP} cycles, {} KiB after {cycles}",
        warm.0,
        end.0
    );
    assert!(
        end.1 <= warm.1,
        "vmletd holds more descriptors: {} after {WARM_UP} cycles, {} after {cycles}",
        warm.1,
        end.1
    );
}

/// vmletd killed with SIGKILL again and again while pods run: after each restart
/// every pod is there once, Ready, its container Running; in the end each
/// container's log counts up without a gap or a repeat.
#[test]
fn repeated_kill_9_of_vmletd_loses_no_pod_and_no_log_line() {
    let restarts = count("VMLET_SOAK_RESTARTS", 3);
    let pods = count("VMLET_SOAK_PODS", 5);
    let (registry, image) = busybox_registry("busybox:soak");
    let net = Net::new(None);
    let mut d = net.daemon(&registry, &image);
    let logs = tempfile::tempdir().unwrap();
    let c = d.client();
    let mut running = Vec::new();
    for i in 0..pods {
        let cfg = kubelet_pod(i, logs.path());
        let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
        let ctr = start_container(
            &c,
            &pod,
            &cfg,
            &image,
            "i=0; trap 'exit 0' TERM; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done",
        );
        running.push((pod, ctr, cfg));
    }
    drop(c);
    let mut recovered = Vec::new();
    for round in 0..restarts {
        // Output keeps coming while vmletd is away.
        let before: Vec<usize> = running
            .iter()
            .map(|(_, _, cfg)| log_lines(cfg).len())
            .collect();
        d.signal_and_wait(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        d.restart();
        let c = d.client();
        let listed = c.list_pods(None);
        let listed_ids: BTreeSet<_> = listed.iter().map(|p| p.id.clone()).collect();
        assert_eq!(listed.len(), pods, "round {round}: {listed:?}");
        assert_eq!(listed_ids.len(), pods, "round {round}: a pod listed twice");
        for (pod, ctr, _) in &running {
            assert!(listed_ids.contains(pod), "round {round}: pod {pod} lost");
            let s = c.pod_status(pod).unwrap().status.unwrap();
            assert_eq!(
                s.state,
                v1::PodSandboxState::SandboxReady as i32,
                "round {round}: pod {pod}"
            );
            let ctrs = c.list(Some(v1::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }));
            assert_eq!(ctrs.len(), 1, "round {round}: {ctrs:?}");
            let st = c.status(ctr).unwrap();
            assert_eq!(
                st.state,
                v1::ContainerState::ContainerRunning as i32,
                "round {round}: {st:?}"
            );
        }
        recovered.push(t.elapsed());
        // Every log grows again after the restart.
        for ((_, _, cfg), n) in running.iter().zip(&before) {
            let start = Instant::now();
            while log_lines(cfg).len() < n + 5 {
                assert!(
                    start.elapsed() < WAIT,
                    "round {round}: {} stalls",
                    cfg.log_directory
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let c = d.client();
    for (pod, ctr, cfg) in &running {
        c.stop(ctr, 10).expect("StopContainer");
        let out = log_lines(cfg);
        assert!(out.len() > 10, "{out:?}");
        for (i, l) in out.iter().enumerate() {
            assert_eq!(l, &format!("line-{i}"), "{pod}: a gap or a repeat at {i}");
        }
        c.remove_pod(pod).expect("RemovePodSandbox");
    }
    let ids: Vec<&str> = running.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_nothing_left(&d, &net, &ids);
    let mut ms: Vec<u128> = recovered.iter().map(|d| d.as_millis()).collect();
    ms.sort();
    say(&format!(
        "{restarts} kill -9 restarts with {pods} pods: socket up to every pod checked in \
         {} ms (median), {} ms (max)",
        ms.get(ms.len() / 2).copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0)
    ));
}

/// `VMLET_SOAK_BURST` RunPodSandbox calls at once (8 in the suite, 30 in
/// `scripts/soak.sh`), each with a kubelet's pod config: each one
/// succeeds, queued behind `vm.max_concurrent_boots` (one at a time inside the emulated
/// TCG machine: nested guests booting at once crash that machine's own kernel); every
/// pod listed Ready has a live VMM and an address of its own; removed all at once,
/// nothing is left.
#[test]
fn a_burst_of_concurrent_run_pod_sandbox_calls_all_succeed() {
    let burst = count("VMLET_SOAK_BURST", 8);
    // The calls queue for the boots: the last one waits for all the others. A boot
    // takes up to 40 s inside a loaded emulated machine with 30 pods running.
    let deadline = Duration::from_secs((40 * burst as u64).max(300));
    let (registry, image) = busybox_registry("busybox:soak");
    let net = Net::new(None);
    let d = net.daemon(&registry, &image);
    let logs = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut runs: Vec<(String, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..burst)
            .map(|i| {
                let (d, logs) = (&d, logs.path());
                s.spawn(move || {
                    let t = Instant::now();
                    let c = d.client();
                    let mut rt = c.runtime.clone();
                    let mut req = tonic::Request::new(v1::RunPodSandboxRequest {
                        config: Some(kubelet_pod(i, logs)),
                        runtime_handler: String::new(),
                    });
                    req.set_timeout(deadline);
                    let id = c
                        .block_on(rt.run_pod_sandbox(req))
                        .unwrap_or_else(|e| panic!("RunPodSandbox {i} of {burst}: {e}"))
                        .into_inner()
                        .pod_sandbox_id;
                    (id, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all = started.elapsed();
    let c = d.client();
    let ids: BTreeSet<_> = runs.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), burst);
    let ready = c.list_pods(Some(v1::PodSandboxFilter {
        state: Some(v1::PodSandboxStateValue {
            state: v1::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    }));
    // Read after the list: a VMM that died before it made its pod NotReady already.
    let vmms = d.vmm_pids();
    let mut ips = BTreeSet::new();
    for p in &ready {
        let status = c.pod_status(&p.id).unwrap();
        let info = &status.info["info"];
        let pid = d.vmm_pid_of(&p.id);
        assert!(
            vmms.contains(&pid),
            "pod {} is Ready, its VMM {pid} is gone",
            p.id
        );
        assert!(info.contains("\"memMib\":128"), "{info}");
        ips.insert(c.pod_ip(&p.id));
    }
    assert_eq!(ready.len(), burst);
    assert_eq!(vmms.len(), burst);
    assert_eq!(ips.len(), burst, "addresses: {ips:?}");
    std::thread::scope(|s| {
        for id in &ids {
            let d = &d;
            s.spawn(move || d.client().remove_pod(id).expect("RemovePodSandbox"));
        }
    });
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_nothing_left(&d, &net, &ids);
    runs.sort_by_key(|(_, t)| *t);
    say(&format!(
        "{burst} concurrent RunPodSandbox calls: all Ready in {:.1} s; a call took {} ms \
         (first), {} ms (median), {} ms (last)",
        all.as_secs_f64(),
        runs[0].1.as_millis(),
        runs[burst / 2].1.as_millis(),
        runs[burst - 1].1.as_millis()
    ));
}
